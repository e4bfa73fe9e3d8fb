"""Cross-frame self-attention: the feature store and the injection processor.

Pix2Video keeps an edited clip coherent by letting each frame's decoder self-attention
look at other, already edited frames: while frame i is denoised at step s, every
self-attention layer (`attn1`) of the UNet decoder takes its queries from frame i and
its keys/values from the layer inputs that the *anchor* frame and the *previous* frame
produced at the same step s (and the same classifier-free-guidance branch).

`FeatureStore` holds those layer inputs, keyed by (frame position, step), and frees each
entry as soon as its last reader has used it. `CrossFrameAttnProcessor` is a diffusers
attention processor installed with `unet.set_attn_processor` on the decoder layers only.
`reference_plan` says which earlier frames each frame attends to (the anchor/previous
choice and the paper's ablations).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..settings import ATTEND_MODES  # noqa: F401 - re-exported: the modes live in settings


def reference_plan(num_frames: int, attend: str, seed: int = 0) -> list[tuple[int, ...]]:
    """For each frame position (in processing order), the positions it attends to.

    Position 0 is the anchor and attends to nobody (ordinary self-attention). A frame never
    attends to itself. When anchor and previous coincide (position 1) the anchor appears
    once: attending to [f0, f0] equals attending to [f0].
    `anchor+random` draws, with `seed`, one earlier non-anchor frame for positions >= 2.
    """
    if attend not in ATTEND_MODES:
        raise ValueError(f"attend must be one of {ATTEND_MODES}, got {attend!r}")
    rng = random.Random(seed)
    plan: list[tuple[int, ...]] = [()]
    for pos in range(1, num_frames):
        if attend == "none":
            refs: tuple[int, ...] = ()
        elif attend == "anchor":
            refs = (0,)
        elif attend == "previous":
            refs = (pos - 1,)
        elif attend == "anchor+previous":
            refs = (0, pos - 1) if pos > 1 else (0,)
        else:  # anchor+random
            refs = (0, rng.randint(1, pos - 1)) if pos > 1 else (0,)
        plan.append(refs)
    return plan


def decoder_self_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Processor names of the decoder's self-attention layers (`up_blocks.*.attn1`).

    In SD2 these are the 9 transformer blocks after the middle block (the reference's
    blocks 7..15); the paper found that injecting in the encoder adds artifacts.
    """
    return [
        name
        for name in unet.attn_processors
        if name.startswith("up_blocks.") and name.endswith("attn1.processor")
    ]


class FeatureStore:
    """Self-attention inputs of frames that later frames attend to, freed after their last read.

    An entry (position, step) holds, per injected layer, that frame's `attn1` input at that
    step with both CFG branches stacked on the batch axis. It is kept only if some later
    frame attends to that position, and dropped once every such frame has read it at that
    step. With anchor+previous processed frame by frame this is the anchor's features plus
    one rolling buffer (frame i-1's step-s entry is replaced by frame i's); processed step
    by step, it is two frames' features of a single step.

    `dtype`/`device` store the features in another precision or on another device (e.g.
    float16 on the CPU while the UNet runs on a GPU) to trade exactness or speed for memory.
    """

    def __init__(
        self,
        plan: list[tuple[int, ...]],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.plan = plan
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self._readers = [0] * len(plan)
        for refs in plan:
            for ref in refs:
                self._readers[ref] += 1
        self._pending: dict[tuple[int, int], int] = {}
        self._bank: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.position: int | None = None
        self.step: int | None = None
        self.nbytes = 0
        self.peak_nbytes = 0

    @contextmanager
    def frame_step(self, position: int, step: int) -> Iterator[None]:
        """Scope one UNet evaluation of frame `position` at denoising step `step`."""
        for ref in self.plan[position]:
            if (ref, step) not in self._bank:
                raise RuntimeError(
                    f"frame {position} needs frame {ref}'s step-{step} features first"
                )
        self.position, self.step = position, step
        if self._readers[position]:
            self._bank[(position, step)] = {}
            self._pending[(position, step)] = self._readers[position]
        try:
            yield
        finally:
            self.position = self.step = None
        for ref in self.plan[position]:
            self._pending[(ref, step)] -= 1
            if self._pending[(ref, step)] == 0:
                self._drop((ref, step))

    @property
    def references(self) -> tuple[int, ...]:
        return self.plan[self.position] if self.position is not None else ()

    def put(self, layer: str, hidden_states: torch.Tensor) -> None:
        """Keep `hidden_states` of the current frame and step, if a later frame will read it."""
        entry = self._bank.get((self.position, self.step))
        if entry is None:
            return
        stored = hidden_states.detach()
        if self.dtype is not None or self.device is not None:
            stored = stored.to(
                device=self.device or stored.device, dtype=self.dtype or stored.dtype
            )
        entry[layer] = stored
        self.nbytes += stored.numel() * stored.element_size()
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def context(self, layer: str, like: torch.Tensor) -> torch.Tensor:
        """Keys/values source of the current frame: its references' features, token-concatenated."""
        parts = [self._bank[(ref, self.step)][layer] for ref in self.references]
        parts = [p.to(device=like.device, dtype=like.dtype) for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self._bank.pop(key)
        self._pending.pop(key)
        self.nbytes -= sum(t.numel() * t.element_size() for t in entry.values())


class CrossFrameAttnProcessor:
    """`attn1` processor: queries from the current frame, keys/values from the store's frames.

    The current frame's own input is stored for later frames but is not part of its own
    keys/values (as in the reference). A frame with no references (the anchor) gets
    ordinary self-attention. Batch rows are CFG branches and stay apart.
    """

    def __init__(self, store: FeatureStore, layer: str) -> None:
        self.store = store
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        self.store.put(self.layer, hidden_states)
        if self.store.references:
            context = self.store.context(self.layer, like=hidden_states)
        else:
            context = hidden_states
        return attend(attn, hidden_states, context)


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of `attn`'s projections: queries from `hidden_states`, keys/values from `context`."""
    batch, _, _ = hidden_states.shape
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (
        t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value)
    )
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


@contextmanager
def cross_frame_attention(unet: torch.nn.Module, store: FeatureStore) -> Iterator[list[str]]:
    """Install `CrossFrameAttnProcessor` on the decoder self-attention layers; restore on exit."""
    original = dict(unet.attn_processors)
    layers = decoder_self_attention_layers(unet)
    processors = dict(original)
    for name in layers:
        processors[name] = CrossFrameAttnProcessor(store, name)
    unet.set_attn_processor(processors)
    try:
        yield layers
    finally:
        unet.set_attn_processor(original)
