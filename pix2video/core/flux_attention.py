"""Cross-frame injection in FLUX's attention (double- and single-stream blocks).

FLUX's double-stream blocks (`transformer_blocks.*.attn`) attend over a frame's text and
image tokens at once, each stream with its own projections; its single-stream blocks
(`single_transformer_blocks.*.attn`) receive text and image tokens concatenated ([text;
image]) and project them alike. Both apply the rotary embedding of the tokens' ids (text:
0; image: its (row, column) on the 2x2-packed latent grid) to queries and keys. The Pix2Video
injection carries over as in SD3's joint attention (`joint_attention.py`): each frame's
**image-token queries** attend to its own text and image keys/values **plus** the image
tokens of the anchor and of the previous frame at the same step; **text-token queries**
attend to the frame's own tokens only. A reference's keys are made from its stored layer
input with this layer's `to_k` and key norm and get the rotary embedding of the *same grid
positions* (equal positions line up, as in Stable Flow's and RF-Solver-Edit's shared
attention); its values with `to_v`. A frame with no references (the anchor) gets diffusers'
own `FluxAttnProcessor`.

What is stored is the layer's input, the image part of it (a single-stream block's input
holds the text first: its first `text_tokens` tokens are dropped), in the shared
`FeatureStore`, so frame batches and the multi-worker exchange work as for the other
backbones.

Block numbering (`EditOptions.inject_blocks`, `--inject-blocks`): FLUX's order of
execution, double-stream blocks first: 0..D-1 are `transformer_blocks.0..D-1`, D..D+S-1
are `single_transformer_blocks.0..S-1` (FLUX.1 [dev]: D = 19, S = 38, blocks 0..56), as
Stable Flow numbers them.

Default blocks: Stable Flow (Avrahami et al., "Stable Flow: Vital Layers for Training-Free
Image Editing", CVPR 2025) measures, per block of FLUX.1 [dev], how much bypassing it changes
the image, and injects only in the "vital" ones: 0, 1, 17, 18 (double-stream) and 25, 28,
53, 54, 56 (single-stream 6, 9, 34, 35, 37), the set its release uses (as we recall it; the
same list appears in other FLUX editors' code). The analysis was made on FLUX.1 [dev], which
FLUX.1 Depth/Canny [dev] are fine-tuned from. A transformer of another depth (the tiny test
models) gets the same blocks at the same relative depth within each kind
(`default_inject_blocks`). Measured on real weights against the later-half rule of the SD3
module: open work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from ..errors import InputError
from .attention import FeatureStore, split_rows

FLUX_DEV_BLOCKS = (19, 38)
"""FLUX.1 [dev]'s double- and single-stream block counts."""
VITAL_BLOCKS = (0, 1, 17, 18, 25, 28, 53, 54, 56)
"""Stable Flow's vital layers of FLUX.1 [dev] (module doc), in the numbering above."""


def default_inject_blocks(double: int, single: int) -> tuple[int, ...]:
    """Stable Flow's vital blocks; for other depths, the same relative depth in each kind."""
    if (double, single) == FLUX_DEV_BLOCKS:
        return VITAL_BLOCKS
    d0, s0 = FLUX_DEV_BLOCKS
    blocks = set()
    for block in VITAL_BLOCKS:
        if block < d0 and double:
            blocks.add(round(block * (double - 1) / (d0 - 1)))
        elif block >= d0 and single:
            blocks.add(double + round((block - d0) * (single - 1) / (s0 - 1)))
    return tuple(sorted(blocks))


def flux_attention_layer(block: int, double: int) -> str:
    """The processor name of block `block` (module doc's numbering) of a transformer with
    `double` double-stream blocks."""
    if block < double:
        return f"transformer_blocks.{block}.attn.processor"
    return f"single_transformer_blocks.{block - double}.attn.processor"


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, heads * d) -> (batch, tokens, heads, d), diffusers' FLUX layout."""
    return x.unflatten(-1, (-1, attn.head_dim))


def _rotary(rotary: tuple[torch.Tensor, torch.Tensor], tokens: slice, repeat: int = 1):
    cos, sin = rotary
    return cos[tokens].repeat(repeat, 1), sin[tokens].repeat(repeat, 1)


def flux_attend(
    attn,
    image: torch.Tensor,
    text: torch.Tensor,
    context: torch.Tensor,
    references: int,
    rotary: tuple[torch.Tensor, torch.Tensor],
    single: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX attention of `attn` with `references` frames' image tokens (`context`, token-
    concatenated) added to the image queries' keys/values (module doc).

    Returns (image, text) outputs, projected as diffusers' processor does (a single-stream
    block's are not: its block projects them).
    """
    n_text = text.shape[1]
    own_rotary = rotary
    image_rotary = _rotary(rotary, slice(n_text, None), references)
    add = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if not single else None
    text_q, text_k, text_v = (
        _heads(attn, p(text)) for p in (add or (attn.to_q, attn.to_k, attn.to_v))
    )
    norm_q = attn.norm_q if single else attn.norm_added_q
    norm_k = attn.norm_k if single else attn.norm_added_k
    query = torch.cat([norm_q(text_q), attn.norm_q(_heads(attn, attn.to_q(image)))], dim=1)
    key = torch.cat([norm_k(text_k), attn.norm_k(_heads(attn, attn.to_k(image)))], dim=1)
    value = torch.cat([text_v, _heads(attn, attn.to_v(image))], dim=1)
    query = apply_rotary_emb(query, own_rotary, sequence_dim=1)
    key = apply_rotary_emb(key, own_rotary, sequence_dim=1)
    ref_key = attn.norm_k(_heads(attn, attn.to_k(context)))
    ref_key = apply_rotary_emb(ref_key, image_rotary, sequence_dim=1)
    ref_value = _heads(attn, attn.to_v(context))
    query, key, value = (x.transpose(1, 2) for x in (query, key, value))
    ref_key, ref_value = ref_key.transpose(1, 2), ref_value.transpose(1, 2)
    image_out = F.scaled_dot_product_attention(
        query[:, :, n_text:], torch.cat([key, ref_key], dim=2), torch.cat([value, ref_value], 2)
    )
    text_out = F.scaled_dot_product_attention(query[:, :, :n_text], key, value)
    image_out = image_out.transpose(1, 2).flatten(2).to(query.dtype)
    text_out = text_out.transpose(1, 2).flatten(2).to(query.dtype)
    if not single:
        image_out = attn.to_out[1](attn.to_out[0](image_out))
        text_out = attn.to_add_out(text_out)
    return image_out, text_out


class FluxCrossFrameAttnProcessor:
    """FLUX attention whose image queries also read the references' image tokens.

    `single`: a single-stream block (input [text; image], `text_tokens` of text). Rows of a
    call are (branch, position in the chunk) as the other processors' (FLUX [dev] has one
    branch); rows with as many references share one attention call.
    """

    def __init__(self, store: FeatureStore, layer: str, single: bool, text_tokens: int) -> None:
        self.store = store
        self.layer = layer
        self.single = single
        self.text_tokens = text_tokens
        self.plain = FluxAttnProcessor()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        plain = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if self.single:
            text, image = hidden_states.split_with_sizes(
                [self.text_tokens, hidden_states.shape[1] - self.text_tokens], dim=1
            )
        else:
            text, image = encoder_hidden_states, hidden_states
        store = self.store
        store.put(self.layer, image)
        positions = store.positions
        if positions is None or attention_mask is not None:  # outside an edit's chunk
            return self.plain(*plain)
        sources = [self._references(p, positions, image) for p in positions]
        if not any(sources):
            return self.plain(*plain)
        rows, text_rows = split_rows(image, len(positions)), split_rows(text, len(positions))
        groups: dict[int, list[int]] = {}  # number of references -> rows
        for j, refs in enumerate(sources):
            groups.setdefault(len(refs), []).append(j)
        image_out = text_out = None
        for count, group in groups.items():
            part_image = rows[:, group].flatten(0, 1)
            part_text = text_rows[:, group].flatten(0, 1)
            if count == 0:
                image_part, text_part = self._plain(attn, part_image, part_text, image_rotary_emb)
            else:
                context = torch.stack([torch.cat(sources[j], dim=1) for j in group], dim=1)
                image_part, text_part = flux_attend(
                    attn, part_image, part_text, context.flatten(0, 1), count,
                    image_rotary_emb, self.single,
                )  # fmt: skip
            if image_out is None:
                image_out = image_part.new_empty(rows.shape[:2] + image_part.shape[1:])
                text_out = text_part.new_empty(text_rows.shape[:2] + text_part.shape[1:])
            image_out[:, group] = split_rows(image_part, len(group))
            text_out[:, group] = split_rows(text_part, len(group))
        image_out, text_out = image_out.flatten(0, 1), text_out.flatten(0, 1)
        if self.single:
            return torch.cat([text_out, image_out], dim=1)
        return image_out, text_out

    def _references(self, position: int, positions: range, image: torch.Tensor) -> list:
        """The image-token inputs of `position`'s references: rows of this call or stored."""
        rows = split_rows(image, len(positions))
        return [
            rows[:, ref - positions.start]
            if ref in positions
            else self.store.features(ref, self.layer, like=image)
            for ref in self.store.references_of(position)
        ]

    def _plain(self, attn, image, text, rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """diffusers' processor on some rows, as (image, text)."""
        if not self.single:
            return self.plain(attn, image, text, None, rotary)
        out = self.plain(attn, torch.cat([text, image], dim=1), None, None, rotary)
        return out[:, text.shape[1] :], out[:, : text.shape[1]]


class FluxAttentionInjection:
    """The FLUX `attention.Injection`: blocks `blocks` (module doc's numbering; the default
    set when None) of `transformer` (a `FluxTransformer2DModel`) whose prompts have
    `text_tokens` tokens."""

    def __init__(
        self, transformer: torch.nn.Module, blocks: Sequence[int] | None, text_tokens: int
    ) -> None:
        double = len(transformer.transformer_blocks)
        count = double + len(transformer.single_transformer_blocks)
        blocks = default_inject_blocks(double, count - double) if blocks is None else blocks
        outside = [b for b in blocks if not 0 <= b < count]
        if outside:
            raise InputError(
                f"inject_blocks {list(outside)} are not blocks of this FLUX transformer, which "
                f"has {count} (0..{double - 1} double-stream, {double}..{count - 1} "
                "single-stream)."
            )
        self.transformer = transformer
        self.blocks = tuple(blocks)
        self.double = double
        self.text_tokens = text_tokens

    def layers(self) -> list[str]:
        return [flux_attention_layer(b, self.double) for b in self.blocks]

    @contextmanager
    def installed(self, store: FeatureStore) -> Iterator[list[str]]:
        original = dict(self.transformer.attn_processors)
        layers = self.layers()
        processors = dict(original)
        for block, name in zip(self.blocks, layers, strict=True):
            single = block >= self.double
            processors[name] = FluxCrossFrameAttnProcessor(store, name, single, self.text_tokens)
        self.transformer.set_attn_processor(processors)
        try:
            yield layers
        finally:
            self.transformer.set_attn_processor(original)
