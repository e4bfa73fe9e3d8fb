"""Cross-frame self-attention: reference plans, layer selection, the injection processor
(against attention computed by hand), the feature store's memory, and processor restoration."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from pix2video.core.attention import (
    ATTEND_MODES,
    CrossFrameAttnProcessor,
    FeatureStore,
    cross_frame_attention,
    decoder_self_attention_layers,
    reference_plan,
)

DECODER_LAYERS = {
    f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1.processor"
    for b in (1, 2, 3)
    for a in (0, 1, 2)
}


# ---------------------------------------------------------------------------- reference plans
def test_plan_anchor_previous():
    # position 1: anchor == previous, listed once
    assert reference_plan(5, "anchor+previous") == [(), (0,), (0, 1), (0, 2), (0, 3)]


def test_plan_anchor_only():
    assert reference_plan(5, "anchor") == [(), (0,), (0,), (0,), (0,)]


def test_plan_previous_only():
    assert reference_plan(5, "previous") == [(), (0,), (1,), (2,), (3,)]


def test_plan_none():
    assert reference_plan(5, "none") == [()] * 5


@pytest.mark.parametrize("mode", ATTEND_MODES)
def test_plan_single_frame_and_length(mode):
    assert reference_plan(1, mode) == [()]
    assert len(reference_plan(7, mode)) == 7


def test_plan_anchor_random_is_seeded_and_valid():
    n = 12
    plans = {seed: reference_plan(n, "anchor+random", seed) for seed in range(6)}
    for seed, plan in plans.items():
        assert plan == reference_plan(n, "anchor+random", seed)  # reproducible
        assert plan[0] == () and plan[1] == (0,)
        for pos in range(2, n):
            anchor, other = plan[pos]
            assert anchor == 0
            assert 1 <= other < pos  # an earlier, non-anchor frame; never itself
    # the seed matters: not all seeds draw the same frames
    assert len({tuple(p) for p in plans.values()}) > 1


def test_plan_rejects_unknown_mode():
    with pytest.raises(ValueError, match="attend"):
        reference_plan(3, "everything")


# ---------------------------------------------------------------------------- layer selection
def test_decoder_self_attention_layers_are_the_nine_up_block_attn1(tiny_pipe):
    layers = decoder_self_attention_layers(tiny_pipe.unet)
    assert len(layers) == 9
    assert set(layers) == DECODER_LAYERS
    # the UNet has 16 transformer blocks (6 down, 1 mid, 9 up), each with attn1 and attn2
    all_names = set(tiny_pipe.unet.attn_processors)
    assert len(all_names) == 32
    assert sum(n.startswith("down_blocks.") and "attn1" in n for n in all_names) == 6
    assert sum(n.startswith("mid_block.") and "attn1" in n for n in all_names) == 1


# ---------------------------------------------------------------------------- the processor
def _attn_module(unet, block: int):
    return unet.up_blocks[block].attentions[0].transformer_blocks[0].attn1


def _layer_name(block: int) -> str:
    return f"up_blocks.{block}.attentions.0.transformer_blocks.0.attn1.processor"


def _by_hand(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head with plain float64 matmuls, then to_out."""
    wq, wk, wv = (m.weight.double() for m in (attn.to_q, attn.to_k, attn.to_v))
    assert attn.to_q.bias is None and attn.to_k.bias is None and attn.to_v.bias is None
    q, k, v = x.double() @ wq.T, context.double() @ wk.T, context.double() @ wv.T
    heads = attn.heads
    d = q.shape[-1] // heads

    def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, H*d) -> (B, H, T, d)
        return t.reshape(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], heads * d)
    out = out @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()
    return out.float()


def _hidden(block: int, tokens: int, seed: int) -> torch.Tensor:
    dim = {1: 64, 2: 64, 3: 32}[block]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, tokens, dim, generator=g)  # rows = (uncond, cond) CFG branches


def _run_positions(attn, layer, frames, plan):
    """Drive a FeatureStore through positions 0..len(frames)-1 at step 0; return the outputs."""
    store = FeatureStore(plan)
    proc = CrossFrameAttnProcessor(store, layer)
    outs = []
    with torch.no_grad():
        for pos, hidden in enumerate(frames):
            with store.frame_step(pos, 0):
                outs.append(proc(attn, hidden))
    return outs, store


@pytest.mark.parametrize("block", [1, 3])  # 4 heads of 16 and 1 head of 32
def test_injection_equals_attention_computed_by_hand(tiny_pipe, block):
    attn, layer = _attn_module(tiny_pipe.unet, block), _layer_name(block)
    tokens = {1: 4, 3: 64}[block]
    anchor, prev, cur = (_hidden(block, tokens, s) for s in (1, 2, 3))
    (out0, out1, out2), store = _run_positions(
        attn, layer, [anchor, prev, cur], reference_plan(3, "anchor+previous")
    )
    assert store.nbytes == 0  # every entry was freed after its last reader
    with torch.no_grad():
        # position 2: queries from the current frame, keys/values from [anchor, previous]
        expected2 = _by_hand(attn, cur, torch.cat([anchor, prev], dim=1))
        torch.testing.assert_close(out2, expected2, atol=1e-5, rtol=0)
        # position 1: keys/values from the anchor only ([f0, f0] == [f0])
        torch.testing.assert_close(out1, _by_hand(attn, prev, anchor), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            out1, _by_hand(attn, prev, torch.cat([anchor, anchor], dim=1)), atol=1e-5, rtol=0
        )
        # the current frame's own tokens are NOT among the keys/values
        with_self = _by_hand(attn, cur, torch.cat([anchor, prev, cur], dim=1))
        assert (out2 - with_self).abs().max() > 1e-3
        # position 0 (the anchor) is ordinary self-attention, as diffusers computes it
        default = AttnProcessor2_0()(attn, anchor)
        torch.testing.assert_close(out0, default, atol=1e-6, rtol=0)
        torch.testing.assert_close(out0, _by_hand(attn, anchor, anchor), atol=1e-5, rtol=0)
        assert (out2 - AttnProcessor2_0()(attn, cur)).abs().max() > 1e-3


@pytest.mark.bitwise
def test_cfg_branches_do_not_mix(tiny_pipe):
    block = 2
    attn, layer = _attn_module(tiny_pipe.unet, block), _layer_name(block)
    anchor, prev, cur = (_hidden(block, 16, s) for s in (4, 5, 6))
    plan = reference_plan(3, "anchor+previous")
    outs, _ = _run_positions(attn, layer, [anchor, prev, cur], plan)
    changed = anchor.clone()
    changed[0] += 3.0  # only the unconditional branch of the anchor
    outs_changed, _ = _run_positions(attn, layer, [changed, prev, cur], plan)
    for pos in (1, 2):
        assert torch.equal(outs[pos][1], outs_changed[pos][1])  # conditional row untouched
        assert (outs[pos][0] - outs_changed[pos][0]).abs().max() > 1e-3


@pytest.mark.bitwise
def test_store_keeps_attn1_input_of_each_decoder_layer(tiny_pipe):
    """Under `cross_frame_attention` a UNet call stores the `norm1` output fed to each attn1."""
    unet = tiny_pipe.unet
    captured = {}
    hooks = []
    for b in (1, 2, 3):
        for a in (0, 1, 2):
            block = unet.up_blocks[b].attentions[a].transformer_blocks[0]
            name = f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1.processor"
            hooks.append(
                block.norm1.register_forward_hook(
                    lambda m, i, o, name=name: captured.__setitem__(name, o.clone())
                )
            )
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 5, 8, 8, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    store = FeatureStore(reference_plan(2, "anchor"))
    try:
        with torch.no_grad(), cross_frame_attention(unet, store) as layers:
            with store.frame_step(0, 0):
                anchor_out = unet(sample, 500, encoder_hidden_states=text).sample
            with store.frame_step(1, 0):
                like = torch.empty(0)
                for layer in layers:
                    stored = store.context(layer, like)
                    assert torch.equal(stored, captured[layer])
                    assert stored.shape[0] == 2  # both CFG branches
                injected = unet(sample + 0.5, 500, encoder_hidden_states=text).sample
    finally:
        for h in hooks:
            h.remove()
    assert store.nbytes == 0
    with torch.no_grad():
        plain = unet(sample, 500, encoder_hidden_states=text).sample
        plain_next = unet(sample + 0.5, 500, encoder_hidden_states=text).sample
    # the anchor's UNet output is unchanged by the processors (ordinary self-attention)
    torch.testing.assert_close(anchor_out, plain, atol=1e-5, rtol=0)
    # frame 1 reads the anchor's features, so its output differs from plain self-attention
    assert (injected - plain_next).abs().max() > 1e-4


# ---------------------------------------------------------------------------- the feature store
ENTRY_LAYERS = ("a", "b")
ELEMENT = torch.zeros(2, 16, 8)  # 1 KiB in float32
ENTRY = len(ENTRY_LAYERS) * ELEMENT.numel() * ELEMENT.element_size()


def _drive(store: FeatureStore, order):
    """Run (position, step) pairs through the store, putting fake features; track nbytes."""
    trace = []
    for pos, step in order:
        with store.frame_step(pos, step):
            for layer in ENTRY_LAYERS:
                store.put(layer, ELEMENT.clone())
            if store.references:
                ctx = store.context(ENTRY_LAYERS[0], like=ELEMENT)
                assert ctx.shape == (2, 16 * len(store.references), 8)
        trace.append(store.nbytes)
    return trace


FRAMES, STEPS = 5, 3
FRAME_MAJOR = [(p, s) for p in range(FRAMES) for s in range(STEPS)]
STEP_MAJOR = [(p, s) for s in range(STEPS) for p in range(FRAMES)]


@pytest.mark.parametrize(
    ("mode", "order", "peak_entries"),
    [
        # anchor: all of its steps + the previous frame's steps (rolling) + the entry being written
        ("anchor+previous", FRAME_MAJOR, STEPS + STEPS + 1),
        # one step: anchor + previous + current
        ("anchor+previous", STEP_MAJOR, 3),
        ("anchor", FRAME_MAJOR, STEPS),
        ("anchor", STEP_MAJOR, 1),
        ("previous", FRAME_MAJOR, STEPS + 1),
        ("previous", STEP_MAJOR, 2),
        ("none", FRAME_MAJOR, 0),
    ],
)
def test_feature_store_peak_memory_and_release(mode, order, peak_entries):
    store = FeatureStore(reference_plan(FRAMES, mode))
    trace = _drive(store, order)
    assert store.peak_nbytes == peak_entries * ENTRY
    assert max(trace) <= store.peak_nbytes
    assert store.nbytes == 0  # everything freed after the last frame read it
    assert trace[-1] == 0


def test_feature_store_remainder_midway_frame_major():
    store = FeatureStore(reference_plan(FRAMES, "anchor+previous"))
    trace = _drive(store, [(p, s) for p in range(3) for s in range(STEPS)])
    # after frames 0..2: the anchor's 3 steps (read by frames 3, 4) + frame 2's (read by 3)
    assert trace[STEPS - 1] == STEPS * ENTRY  # after frame 0
    assert trace[2 * STEPS - 1] == 2 * STEPS * ENTRY  # after frame 1
    assert store.nbytes == 2 * STEPS * ENTRY
    # after step-major step 0 of all frames, only later steps' entries could remain: none
    store = FeatureStore(reference_plan(FRAMES, "anchor+previous"))
    trace = _drive(store, STEP_MAJOR[:FRAMES])
    assert trace == [ENTRY, 2 * ENTRY, 2 * ENTRY, 2 * ENTRY, 0]


def test_feature_store_last_frame_and_readerless_frames_store_nothing():
    store = FeatureStore(reference_plan(3, "anchor"))
    with store.frame_step(0, 0):
        store.put("a", ELEMENT)
    assert store.nbytes == ENTRY // 2
    with store.frame_step(1, 0):  # nobody reads frame 1 in anchor mode
        store.put("a", ELEMENT)
        assert store.nbytes == ENTRY // 2
    with store.frame_step(2, 0):
        store.put("a", ELEMENT)
    assert store.nbytes == 0
    store.put("a", ELEMENT)  # outside any frame: ignored
    assert store.nbytes == 0


def test_feature_store_missing_reference_raises():
    store = FeatureStore(reference_plan(3, "anchor+previous"))
    with pytest.raises(RuntimeError, match="frame 0"):
        with store.frame_step(1, 0):
            pass
    with store.frame_step(0, 0):
        store.put("a", ELEMENT)
    with pytest.raises(RuntimeError, match="step-1"):
        with store.frame_step(1, 1):  # frame 0 has not produced step 1 yet
            pass
    with pytest.raises(RuntimeError, match="frame 1"):
        with store.frame_step(2, 0):  # frame 1 has not run step 0 yet
            pass


def test_feature_store_dtype_halves_bytes_and_context_casts_back():
    store = FeatureStore(reference_plan(2, "anchor"), dtype=torch.float16)
    x = torch.randn(2, 16, 8)
    with store.frame_step(0, 0):
        store.put("a", x)
    assert store.peak_nbytes == x.numel() * 2
    with store.frame_step(1, 0):
        ctx = store.context("a", like=x)
    assert ctx.dtype == torch.float32
    torch.testing.assert_close(ctx, x.half().float(), atol=0, rtol=0)
    assert 0 < (ctx - x).abs().max() < 1e-2


# ---------------------------------------------------------------------------- install / restore
def test_cross_frame_attention_installs_only_on_decoder_attn1_and_restores(tiny_pipe):
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    store = FeatureStore(reference_plan(2, "anchor"))
    with cross_frame_attention(unet, store) as layers:
        assert set(layers) == DECODER_LAYERS
        inside = unet.attn_processors
        for name, proc in inside.items():
            if name in DECODER_LAYERS:
                assert isinstance(proc, CrossFrameAttnProcessor)
                assert proc.layer == name and proc.store is store
            else:
                assert proc is before[name]
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


def test_cross_frame_attention_restores_after_an_exception(tiny_pipe):
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    store = FeatureStore(reference_plan(2, "anchor"))
    with pytest.raises(KeyError, match="boom"):
        with cross_frame_attention(unet, store):
            assert any(
                isinstance(p, CrossFrameAttnProcessor) for p in unet.attn_processors.values()
            )
            raise KeyError("boom")
    after = unet.attn_processors
    assert all(after[name] is before[name] for name in before)
