"""CLIP-Text and CLIP-Image: a CLIP model's image and text embeddings, and their cosines.

`DEFAULT_CLIP_MODEL` (defined in `models`, so the CLI can show it without importing torch):
the CLIP used for CLIP-Text / CLIP-Image unless another is named.

ViT-L/14 is the CLIP that most text-driven video-editing papers since Tune-A-Video and
Pix2Video report their CLIP scores with, so numbers computed with it are comparable to the
published ones. `openai/clip-vit-base-patch32` is several times faster (and smaller to
download) but gives systematically different values; pass it explicitly for quick checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..models import DEFAULT_CLIP_MODEL, load_pretrained
from .frames import check_frames, to_uint8

CLIP_MAX_TOKENS = 77
CLIP_BATCH_SIZE = 8


def _features(out: Any, kind: str) -> torch.Tensor:
    """The projected embedding from `get_{image,text}_features`, whatever transformers returns.

    transformers 4.x returns the projected tensor; 5.x returns a `BaseModelOutputWithPooling`
    whose `pooler_output` holds the projected embedding.
    """
    if isinstance(out, torch.Tensor):
        return out
    for name in (f"{kind}_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"Unexpected output of get_{kind}_features: {type(out).__name__}")


class ClipScorer:
    """CLIP image / text embeddings and the CLIP-Text / CLIP-Image scores."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.model_name = str(model)
        self.device = torch.device(device)
        self.model = load_pretrained(CLIPModel.from_pretrained, self.model_name, what="CLIP model")
        self.processor = load_pretrained(
            CLIPProcessor.from_pretrained, self.model_name, what="CLIP processor"
        )
        self.model.to(self.device).eval()
        self.batch_size = CLIP_BATCH_SIZE

    def _max_tokens(self) -> int:
        limit = getattr(self.model.config.text_config, "max_position_embeddings", CLIP_MAX_TOKENS)
        return int(limit or CLIP_MAX_TOKENS)

    def image_embeddings(self, frames: list[np.ndarray]) -> torch.Tensor:
        """N x D float32 CPU tensor of L2-normalised image embeddings (batches of 8)."""
        check_frames(frames, "input")
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                batch = [to_uint8(f) for f in frames[i : i + self.batch_size]]
                inputs = self.processor(images=batch, return_tensors="pt")
                pixels = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
                emb = _features(self.model.get_image_features(pixel_values=pixels), "image")
                chunks.append(emb.float().cpu())
        emb = torch.cat(chunks)
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """D float32 CPU tensor: the L2-normalised embedding of `prompt`.

        Raises `InputError` when the prompt has more tokens than CLIP's context (77, start and
        end tokens included) instead of silently truncating it.
        """
        limit = self._max_tokens()
        ids = self.processor.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(ids) > limit:
            raise InputError(
                f"The prompt is too long for CLIP ({len(ids)} tokens > {limit}); shorten it."
            )
        inputs = self.processor.tokenizer([prompt], padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            emb = _features(self.model.get_text_features(**inputs), "text")[0].float().cpu()
        return emb / emb.norm()

    def clip_text(self, frames: list[np.ndarray], prompt: str) -> list[float]:
        """Per frame: cosine(image embedding, prompt embedding)."""
        text = self.text_embedding(prompt)
        return [float(v) for v in self.image_embeddings(frames) @ text]

    def clip_image(self, frames: list[np.ndarray]) -> list[float]:
        """Per consecutive pair (t, t+1): cosine of the two image embeddings (N-1 values)."""
        emb = self.image_embeddings(frames)
        return [float(v) for v in (emb[:-1] * emb[1:]).sum(dim=-1)]
