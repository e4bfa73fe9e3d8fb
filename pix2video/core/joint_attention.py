"""Cross-frame injection in the joint attention of SD3's MMDiT blocks.

A UNet's decoder self-attention attends over one frame's image tokens; SD3's
`JointTransformerBlock` attention attends over the frame's image tokens *and* its text
tokens at once (queries, keys and values of both streams, concatenated). The Pix2Video
injection carries over as: each frame's **image-token queries** attend to its own text and
image keys/values **plus** the image tokens of the anchor and of the previous frame at the
same step and guidance branch; the **text-token queries** attend to the frame's own tokens
only, so a frame's text stream is its own. A frame with no references (the anchor) gets
ordinary joint attention (diffusers' own `JointAttnProcessor2_0`).

As in the UNet version (`attention.py`), what is stored is the layer's *input* (the image
stream's normalised hidden states that the processor receives), and the references' keys
and values are made from it with this layer's `to_k`/`to_v` and its key norm: the same
`FeatureStore` then serves frame batches (a reference in the same call is read from that
call's rows) and the multi-worker exchange. SD3 has no rotary embedding (positions are added
once, at the patch embedding), so a reference's tokens already carry their grid positions.

Which blocks. Pix2Video injects in the UNet decoder's self-attention, where it found the
appearance decided (injecting in the encoder adds artifacts). On SD3 the counterpart of
that self-attention is the image-to-image part of the joint attention: Shin et al.
("Exploring Multimodal Diffusion Transformers for Enhanced Prompt-based Image Editing",
ICCV 2025) decompose SD3/SD3.5's joint attention into image-to-image, text-to-image,
image-to-text and text-to-text parts and find the image-to-image part plays the UNet
self-attention's role (structure and appearance), which is where the image tokens injected
here act. A DiT has no encoder/decoder split, and which of its blocks carry appearance is
model-specific (Stable Flow, Avrahami et al. CVPR 2025, measure it per layer, for FLUX.1
[dev] only; Shin et al.'s SD3 edits share image features throughout the network, to keep a
source image's structure). Our frames have their own structure (motion, given by each
frame's control latents), which the anchor must not overwrite, so the default keeps the
paper's rule, its decoder's counterpart: the later half of the joint blocks
(`default_inject_blocks`: 12..23 of SD3.5 Medium's 24, 19..37 of Large's 38).
`EditOptions.inject_blocks` (`--inject-blocks`) overrides it, e.g. every block, as Shin et
al. share features; comparing the two on real weights is open work.

SD3.5 Medium's MMDiT-X blocks (`dual_attention_layers`, 0..12) have a second attention,
`attn2`, over the image tokens alone: a plain image self-attention, the exact analogue of the
UNet's. A chosen block injects there too (image queries read the references' image tokens,
made by `attn2`'s own projections and key norm from its stored input), so the whole
image-to-image attention of the block attends to the anchor and the previous frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

from ..errors import InputError
from .attention import FeatureStore, split_rows


def default_inject_blocks(num_blocks: int) -> tuple[int, ...]:
    """The later half of the joint blocks (module doc): appearance, as the UNet decoder."""
    return tuple(range(num_blocks // 2, num_blocks))


def joint_attention_layer(block: int) -> str:
    """The processor name of joint block `block`'s attention."""
    return f"transformer_blocks.{block}.attn.processor"


def image_attention_layer(block: int) -> str:
    """The processor name of MMDiT-X block `block`'s image-only attention (`attn2`)."""
    return f"transformer_blocks.{block}.attn2.processor"


class JointCrossFrameAttnProcessor:
    """Joint attention whose image queries also read the references' image tokens; without
    text (an MMDiT-X block's `attn2`), image self-attention that reads them.

    Rows of a call are branch-major (branch, position in the chunk), as the UNet processor's;
    rows whose references are as many share one attention call, CFG branches stay apart.
    """

    def __init__(self, store: FeatureStore, layer: str) -> None:
        self.store = store
        self.layer = layer
        self.plain = JointAttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        store = self.store
        store.put(self.layer, hidden_states)
        positions = store.positions
        if positions is None:  # outside an edit's chunk
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask)
        if encoder_hidden_states is None:  # attn2: image self-attention, text-free rows
            encoder_hidden_states = hidden_states[:, :0]
        rows = split_rows(hidden_states, len(positions))
        text_rows = split_rows(encoder_hidden_states, len(positions))

        def references(position: int) -> list[torch.Tensor]:
            return [
                rows[:, ref - positions.start]
                if ref in positions
                else store.features(ref, self.layer, like=hidden_states)
                for ref in store.references_of(position)
            ]

        sources = [references(p) for p in positions]
        groups: dict[int, list[int]] = {}  # number of references -> rows
        for j, refs in enumerate(sources):
            groups.setdefault(len(refs), []).append(j)
        image_out = text_out = None
        for count, group in groups.items():
            image = rows[:, group].flatten(0, 1)
            text = text_rows[:, group].flatten(0, 1)
            if count == 0:
                image_part, text_part = self._plain(attn, image, text)
            else:
                context = torch.stack([torch.cat(sources[j], dim=1) for j in group], dim=1)
                image_part, text_part = joint_attend(attn, image, text, context.flatten(0, 1))
            if len(group) == len(positions):
                return _outputs(image_part, text_part)
            if image_out is None:
                image_out = image_part.new_empty(rows.shape[:2] + image_part.shape[1:])
                text_out = text_part.new_empty(text_rows.shape[:2] + text_part.shape[1:])
            image_out[:, group] = split_rows(image_part, len(group))
            text_out[:, group] = split_rows(text_part, len(group))
        return _outputs(image_out.flatten(0, 1), text_out.flatten(0, 1))

    def _plain(self, attn: Attention, image: torch.Tensor, text: torch.Tensor):
        """diffusers' processor: joint, or image-only where the rows have no text tokens."""
        if text.shape[1]:
            return self.plain(attn, image, text)
        return self.plain(attn, image), text


def _outputs(image: torch.Tensor, text: torch.Tensor):
    """(image, text) of joint attention; the image output alone for `attn2` (no text)."""
    return (image, text) if text.shape[1] else image


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, heads * d) -> (batch, heads, tokens, d)."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def _norm(norm: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return norm(x) if norm is not None else x


def joint_attend(
    attn: Attention, image: torch.Tensor, text: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3 joint attention of `attn`'s projections with extra image keys/values from `context`.

    Image queries attend to [own image, own text, context]; text queries to [own image,
    own text] only. Returns the (image, text) outputs, projected as diffusers' processor;
    with no text tokens (`attn2`) the text output is empty.
    """
    query = _norm(attn.norm_q, _heads(attn, attn.to_q(image)))
    own_key = _norm(attn.norm_k, _heads(attn, attn.to_k(image)))
    own_value = _heads(attn, attn.to_v(image))
    ref_key = _norm(attn.norm_k, _heads(attn, attn.to_k(context)))
    ref_value = _heads(attn, attn.to_v(context))
    if text.shape[1]:  # joint: the frame's own keys are its image and text tokens
        text_query = _norm(attn.norm_added_q, _heads(attn, attn.add_q_proj(text)))
        text_key = _norm(attn.norm_added_k, _heads(attn, attn.add_k_proj(text)))
        own_key = torch.cat([own_key, text_key], dim=2)
        own_value = torch.cat([own_value, _heads(attn, attn.add_v_proj(text))], dim=2)
    image_out = F.scaled_dot_product_attention(
        query, torch.cat([own_key, ref_key], dim=2), torch.cat([own_value, ref_value], dim=2)
    )
    image_out = image_out.transpose(1, 2).flatten(2).to(query.dtype)
    image_out = attn.to_out[1](attn.to_out[0](image_out))
    if not text.shape[1]:
        return image_out, text
    text_out = F.scaled_dot_product_attention(text_query, own_key, own_value)
    text_out = text_out.transpose(1, 2).flatten(2).to(query.dtype)
    if not attn.context_pre_only:
        text_out = attn.to_add_out(text_out)
    return image_out, text_out


class JointAttentionInjection:
    """The SD3 `attention.Injection`: joint blocks `blocks` of `transformer` (a
    `SD3Transformer2DModel`), the default set when None (module doc)."""

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[int] | None = None) -> None:
        count = len(transformer.transformer_blocks)
        blocks = default_inject_blocks(count) if blocks is None else tuple(blocks)
        outside = [b for b in blocks if not 0 <= b < count]
        if outside:
            raise InputError(
                f"inject_blocks {list(outside)} are not joint blocks of this transformer, which "
                f"has {count} (0..{count - 1})."
            )
        self.transformer = transformer
        self.blocks = blocks

    def layers(self) -> list[str]:
        """Each chosen block's joint attention, and its `attn2` where it has one (module doc)."""
        blocks = self.transformer.transformer_blocks
        layers = []
        for b in self.blocks:
            layers.append(joint_attention_layer(b))
            if getattr(blocks[b], "attn2", None) is not None:
                layers.append(image_attention_layer(b))
        return layers

    @contextmanager
    def installed(self, store: FeatureStore) -> Iterator[list[str]]:
        original = dict(self.transformer.attn_processors)
        layers = self.layers()
        processors = dict(original)
        for name in layers:
            processors[name] = JointCrossFrameAttnProcessor(store, name)
        self.transformer.set_attn_processor(processors)
        try:
            yield layers
        finally:
            self.transformer.set_attn_processor(original)
