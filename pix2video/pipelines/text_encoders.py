"""The text encoders of the transformer backbones: run once per prompt, then freed.

FLUX's and SD3's T5-XXL alone is 9.5 GB (bfloat16) and reads each prompt once per edit, so
keeping it beside the transformer only costs memory. The design (`PromptMemory`, mixed into
`flux.FluxBase` and `sd3.Pix2VideoSD3ControlNetPipeline`):

- every prompt's embedding is kept by its text (a few MB each; the last `MAX_PROMPTS`), so a
  pipeline reused by a server (`job.PipelineCache`) encodes a prompt it has seen without any
  text encoder;
- `release_text_encoders()` (the job calls it once its prompts are encoded) drops the text
  encoders; a later prompt not yet seen reloads them from the checkpoint they came from
  (`name_or_path`: its folder or hub id, offline) and drops them again at the next release.
  A checkpoint whose encoders cannot be reloaded as they were (a LoRA fused into them, or a
  pipeline not loaded from a folder or hub id) keeps them, moved to the CPU, so the GPU is
  freed and the embeddings stay exact.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from pathlib import Path

import torch

from .onednn import OneDNNLinear, use_onednn_linears

MAX_PROMPTS = 16
"""Prompt embeddings kept per pipeline (FLUX: 513 x 4096 floats, 8 MB each)."""
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


class PromptMemory:
    """A pipeline mixin: `encode_prompt` is `encode_text` remembered by prompt (module doc)."""

    text_encoder_calls: int = 0  # prompts actually encoded (not from memory)
    text_encoders_fused: bool = False  # set by `checkpoints.apply_loras`: not reloadable

    def encode_text(self, prompt: str) -> torch.Tensor:
        """The backbone's own encoding of `prompt` with its text encoders."""
        raise NotImplementedError

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        memory = self.__dict__.setdefault("_prompt_memory", OrderedDict())
        if prompt in memory:
            memory.move_to_end(prompt)
            return memory[prompt]
        self._reload_text_encoders()
        embedding = self.encode_text(prompt)
        self.text_encoder_calls += 1
        memory[prompt] = embedding
        while len(memory) > MAX_PROMPTS:
            memory.popitem(last=False)
        return embedding

    def release_text_encoders(self) -> None:
        """Free the text encoders' memory (module doc): dropped when they can be reloaded as
        they are, else moved to the CPU."""
        released = self.__dict__.setdefault("_released_encoders", {})
        for name in TEXT_ENCODERS:
            encoder = getattr(self, name, None)
            if encoder is None:
                continue
            if self.text_encoders_reloadable:
                onednn = any(isinstance(m, OneDNNLinear) for m in encoder.modules())
                released[name] = (type(encoder), encoder.dtype, onednn)
                setattr(self, name, None)
            elif getattr(self, "offload_device", None) is None:  # offload's hooks park them
                encoder.to("cpu")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def text_encoders_reloadable(self) -> bool:
        """The encoders come unchanged from a folder or hub id `from_pretrained` read."""
        source = getattr(self.config, "_name_or_path", None)
        return bool(source) and not self.text_encoders_fused and _loadable(str(source))

    def _reload_text_encoders(self) -> None:
        """Bring back released encoders (from the checkpoint) and CPU-parked ones."""
        released = self.__dict__.get("_released_encoders", {})
        source = str(getattr(self.config, "_name_or_path", ""))
        for name, (cls, dtype, onednn) in list(released.items()):
            encoder = cls.from_pretrained(
                source, subfolder=name, torch_dtype=dtype, local_files_only=True
            )
            if onednn:  # as `checkpoints.load_backbone` made it: the same kernels, bitwise
                use_onednn_linears(encoder)
            setattr(self, name, encoder.to(self.device))  # dropped again at the next release
            del released[name]
        if getattr(self, "offload_device", None) is not None:
            return  # offload's hooks bring parked encoders to the GPU as they run
        for name in TEXT_ENCODERS:
            encoder = getattr(self, name, None)
            if encoder is not None and encoder.device != self.device:
                encoder.to(self.device)


def _loadable(source: str) -> bool:
    """A folder, or a hub id (owner/name) whose files are in the local cache."""
    path = Path(source).expanduser()
    return path.is_dir() or (not path.exists() and source.count("/") == 1)
