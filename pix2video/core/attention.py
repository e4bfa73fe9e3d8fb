"""Cross-frame self-attention: the feature store and the injection processor.

Pix2Video keeps an edited clip coherent by letting each frame's decoder self-attention
look at other, already edited frames: while frame i is denoised at step s, every
self-attention layer (`attn1`) of the UNet decoder takes its queries from frame i and
its keys/values from the layer inputs that the *anchor* frame and the *previous* frame
produced at the same step s (and the same classifier-free-guidance branch).

Several consecutive frames can share one UNet call at the same step (frame-batched
editing, a *chunk*): frame i's input to layer l depends only on frame i-1's input to the
same layer at the same step, which the batched forward pass has already computed when layer
l runs. So within a chunk a row reads its references from the rows of the same call, and
only references in earlier chunks come from the store; the result equals one frame at a
time up to float reassociation.

`FeatureStore` holds the layer inputs that a later chunk reads, keyed by (frame position,
step), and frees each entry as soon as its last reader has used it. `CrossFrameAttnProcessor`
is a diffusers attention processor installed with `unet.set_attn_processor` on the decoder
layers only. `reference_plan` says which earlier frames each frame attends to (the
anchor/previous choice and the paper's ablations).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .frame_chain import NoExchange, chunks_of
from .options import ATTEND_MODES

if TYPE_CHECKING:
    from .frame_chain import ChainExchange


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
    """Self-attention inputs that later chunks attend to, freed after their last read.

    Positions are processed in chunks of `chunk_size` consecutive positions per UNet call
    (0..N-1, N..2N-1, ...; 1 = one frame at a time). An entry (position, step) holds, per
    injected layer, that frame's `attn1` input at that step with both CFG branches stacked
    on the batch axis. It is kept only if a frame in a *later chunk* attends to that
    position (a reader in the same chunk reads the row of the same call), and dropped once
    every such frame has read it at that step. With anchor+previous, step by step, this is
    per step the anchor's features and the boundary row between two chunks, whatever the
    chunk size; frame by frame (chunks of one), the anchor's features plus one rolling
    buffer. With anchor+random it is every earlier frame a later chunk drew, until read.

    A worker of a split chain (`frame_chain`) passes its own `chunks` and an `exchange`:
    positions outside its chunks are other workers'; their entries are received from the
    exchange the first time a layer reads them, and its own rows that other workers read
    are sent as the layer computes them.

    `dtype`/`device` store the features in another precision or on another device (e.g.
    float16 on the CPU while the UNet runs on a GPU) to trade exactness or speed for memory.
    """

    def __init__(
        self,
        plan: list[tuple[int, ...]],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        chunk_size: int = 1,
        chunks: list[range] | None = None,
        exchange: ChainExchange | NoExchange | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.plan = plan
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.chunk_size = chunk_size
        # The UNet calls' positions: consecutive chunks of `chunk_size` over the clip, or a
        # worker's own chunks in a split chain (`frame_chain`), whose other frames' features
        # arrive through `exchange` (and its own leave through it).
        if chunks is None:
            chunks = chunks_of(range(len(plan)), chunk_size)
        self._chunk_of = {position: chunk for chunk in chunks for position in chunk}
        self.exchange = exchange if exchange is not None else NoExchange()
        self._readers = [0] * len(plan)  # readers in later chunks (here: this worker's)
        for position in self._chunk_of:
            for ref in plan[position]:
                if not self._same_chunk(ref, position):
                    self._readers[ref] += 1
        self._pending: dict[tuple[int, int], int] = {}
        self._bank: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.positions: range | None = None
        self.step: int | None = None
        self.nbytes = 0
        self.peak_nbytes = 0

    def _same_chunk(self, a: int, b: int) -> bool:
        return a in self._chunk_of and self._chunk_of[a] == self._chunk_of.get(b)

    def is_local(self, position: int) -> bool:
        return position in self._chunk_of

    def chunk(self, position: int) -> range:
        """The positions that share a UNet call with `position`."""
        return self._chunk_of[position]

    @contextmanager
    def chunk_step(self, positions: range, step: int) -> Iterator[None]:
        """Scope one UNet evaluation of the chunk `positions` at denoising step `step`."""
        if positions != self.chunk(positions.start):
            raise ValueError(f"positions {positions} are not a chunk of {self.chunk_size}")
        for position in positions:
            for ref in self.plan[position]:
                if not self.is_local(ref) and (ref, step) not in self._bank:
                    self._bank[(ref, step)] = {}  # filled as the layers receive it
                    self._pending[(ref, step)] = self._readers[ref]
                if ref not in positions and (ref, step) not in self._bank:
                    raise RuntimeError(
                        f"frame {position} needs frame {ref}'s step-{step} features first"
                    )
        self.positions, self.step = positions, step
        for position in positions:
            if self._readers[position]:
                self._bank[(position, step)] = {}
                self._pending[(position, step)] = self._readers[position]
        try:
            yield
        finally:
            self.positions = self.step = None
        for position in positions:
            for ref in self.plan[position]:
                if ref not in positions:
                    self._pending[(ref, step)] -= 1
                    if self._pending[(ref, step)] == 0:
                        self._drop((ref, step))

    def frame_step(self, position: int, step: int):
        """Scope one UNet evaluation of frame `position` alone (chunks of one) at `step`."""
        return self.chunk_step(range(position, position + 1), step)

    def references_of(self, position: int) -> tuple[int, ...]:
        return self.plan[position]

    @property
    def references(self) -> tuple[int, ...]:
        """The references of the current frame (a chunk of one)."""
        if self.positions is None:
            return ()
        if len(self.positions) != 1:
            raise RuntimeError("references of a chunk are per position: use references_of")
        return self.plan[self.positions.start]

    def put(self, layer: str, hidden_states: torch.Tensor) -> None:
        """Keep the rows of `hidden_states` that a later chunk will read.

        Rows are branch-major: (branch, position in the chunk), as `split_rows` splits them.
        """
        if self.positions is None:
            return
        rows = split_rows(hidden_states, len(self.positions))
        for j, position in enumerate(self.positions):
            if self.exchange.has_readers(position):
                self.exchange.send_features(
                    position, layer, rows[:, j].to(self.dtype or rows.dtype)
                )
            entry = self._bank.get((position, self.step))
            if entry is None:
                continue
            stored = rows[:, j].detach()
            if len(self.positions) > 1:  # a view would keep the whole chunk's rows alive
                stored = stored.clone()
            if self.dtype is not None or self.device is not None:
                stored = stored.to(
                    device=self.device or stored.device, dtype=self.dtype or stored.dtype
                )
            entry[layer] = stored
            self.nbytes += stored.numel() * stored.element_size()
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def features(self, ref: int, layer: str, like: torch.Tensor) -> torch.Tensor:
        """Frame `ref`'s stored input to `layer` at the current step, as `like`'s dtype/device.

        `like` is the current call's input to `layer`; another worker's frame is received
        the first time a row reads it at this step, and kept for the step's later chunks.
        """
        entry = self._bank[(ref, self.step)]
        if layer not in entry:  # another worker's frame
            row_shape = split_rows(like, len(self.positions)).shape[:1] + like.shape[1:]
            received = self.exchange.receive(ref, row_shape, self.dtype or like.dtype, like.device)
            if self.device is not None:
                received = received.to(self.device)
            entry[layer] = received
            self.nbytes += received.numel() * received.element_size()
            self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        return entry[layer].to(device=like.device, dtype=like.dtype)

    def context(self, layer: str, like: torch.Tensor) -> torch.Tensor:
        """Keys/values source of the current frame (a chunk of one): its references' features."""
        parts = [self.features(ref, layer, like) for ref in self.references]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self._bank.pop(key)
        self._pending.pop(key)
        self.nbytes -= sum(t.numel() * t.element_size() for t in entry.values())


def split_rows(hidden_states: torch.Tensor, frames: int) -> torch.Tensor:
    """(branches, frames, tokens, channels) view of a chunk's (branches * frames, ...) batch.

    A guided call stacks [uncond of each frame, cond of each frame]; unguided, one branch.
    """
    return hidden_states.unflatten(0, (hidden_states.shape[0] // frames, frames))


class CrossFrameAttnProcessor:
    """`attn1` processor: queries from each frame, keys/values from its references' inputs.

    A frame's own input is stored for later chunks but is not part of its own keys/values
    (as in the reference). A frame with no references (the anchor) gets ordinary
    self-attention. In a chunk, a reference in the same chunk is read from the row of this
    very call, an earlier one from the store. Rows whose keys/values have the same length
    share one attention call. CFG branches stay apart.
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
        store = self.store
        store.put(self.layer, hidden_states)
        positions = store.positions or range(1)  # outside a chunk: plain self-attention
        rows = split_rows(hidden_states, len(positions))

        def source(j: int, position: int) -> torch.Tensor:
            """Keys/values source of row j: its references' inputs, token-concatenated."""
            refs = store.references_of(position) if store.positions is not None else ()
            parts = [
                rows[:, ref - positions.start]
                if ref in positions
                else store.features(ref, self.layer, like=hidden_states)
                for ref in refs
            ] or [rows[:, j]]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        sources = [source(j, p) for j, p in enumerate(positions)]
        if len(positions) == 1:
            return attend(attn, hidden_states, sources[0])
        groups: dict[int, list[int]] = {}  # keys/values length -> rows
        for j, context in enumerate(sources):
            groups.setdefault(context.shape[1], []).append(j)
        out = None
        for group in groups.values():
            whole = len(group) == len(positions)
            query = hidden_states if whole else rows[:, group].flatten(0, 1)
            context = torch.stack([sources[j] for j in group], dim=1).flatten(0, 1)
            result = attend(attn, query, context)
            if whole:
                return result
            if out is None:
                out = result.new_empty(rows.shape[:2] + result.shape[1:])
            out[:, group] = split_rows(result, len(group))
        return out.flatten(0, 1)


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


class Injection(Protocol):
    """Where a backbone's cross-frame attention goes: the layers' names (the store's and the
    exchange's keys) and the processors' installation for the duration of an edit."""

    def layers(self) -> list[str]:
        """Processor names of the injected layers."""
        ...

    def installed(self, store: FeatureStore) -> AbstractContextManager[list[str]]:
        """Install the injecting processors on those layers; restore the originals on exit."""
        ...


class DecoderSelfAttention:
    """The UNet backbones' `Injection`: the decoder's self-attention layers (the paper's)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet

    def layers(self) -> list[str]:
        return decoder_self_attention_layers(self.unet)

    def installed(self, store: FeatureStore) -> AbstractContextManager[list[str]]:
        return cross_frame_attention(self.unet, store)
