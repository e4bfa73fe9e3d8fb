"""The frame chain split across workers (`core.frame_chain`): exact, in every mode.

2 and 3 worker processes (gloo over local TCP, as `pix2video edit --workers N` starts them)
each edit their runs of a 7-frame clip (one run each, or short runs dealt in turn) through
`pipe.edit(..., chain=...)`, the call a job's worker makes, and the parts put together must
equal one process's edit. The tiny model runs in float64 here so that a frame batch cut
differently across workers than in one process still agrees to reassociation (~1e-15); a
wrong row read (the wrong frame's features, the wrong x0) would show as a gap of order 1.
The job-level tests (`test_multi_worker.py`) run float32, as users do.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pix2video import load_pipeline
from pix2video.core.attention import ATTEND_MODES
from pix2video.core.edit_loop import EditCheckpoint
from pix2video.core.frame_chain import ChainPlace, ChainSplit, _reading_order, chunks_of
from pix2video.core.options import anchor_order

FRAMES, STEPS = 7, 4
TOLERANCE = 1e-5  # the bound on final latents

CONFIGS: dict[str, dict] = {
    **{f"attend={mode}": {"attend": mode} for mode in ATTEND_MODES},
    "no guidance": {"latent_guidance_weight": 0.0},
    "guidance towards step 0": {"latent_guidance_target": "step:0"},
    "anchor last": {"anchor": "last"},
    "masked": {"masked": True},
    "frame batch 2": {"frame_batch": 2},
    "frame batch 3, anchor+random": {"frame_batch": 3, "attend": "anchor+random", "seed": 5},
    "float16 feature store": {"feature_store_dtype": torch.float16},
    "resumed after step 1": {"resume": 1},
}


def _clip(pipe):
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(FRAMES, 4, 8, 8, generator=g, dtype=torch.float64)
    depth = torch.rand(FRAMES, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    masks = torch.rand(FRAMES, 1, 8, 8, generator=g) > 0.4
    sources = torch.randn(FRAMES, STEPS, 4, 8, 8, generator=g, dtype=torch.float64)
    return x_t, depth, masks, sources, pipe.encode_prompt("a red car"), pipe.encode_prompt("")


def _edit(pipe, clip, config: dict, chain: ChainPlace | None = None, resume=None, steps=None):
    """`pipe.edit` of the clip under `config`: one process (chain None) or one worker's part."""
    x_t, depth, masks, sources, prompt, negative = clip
    kwargs = {k: v for k, v in config.items() if k not in ("masked", "resume")}
    order = anchor_order(FRAMES, kwargs.get("anchor", "first"))
    rows = [order[p] for p in chain.positions] if chain is not None else list(range(FRAMES))
    if config.get("masked"):
        kwargs.update(masks=masks[rows], source_latents=sources)
    checkpoints: list[EditCheckpoint] = []
    final, store = pipe.edit(
        x_t[rows], depth, prompt, negative, num_inference_steps=STEPS, chain=chain,
        resume=resume, on_step_end=checkpoints.append, **kwargs,
    )  # fmt: skip
    return final, checkpoints, store


SPLITS = {  # one run per worker, and runs of 2 (or 1) frames dealt in turn
    "even": lambda world: ChainSplit.even(FRAMES, world),
    "dealt": lambda world: ChainSplit.dealt(FRAMES, world, 2 if world == 2 else 1),
}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    pipe = load_pipeline("tiny", torch_dtype=torch.float64)
    clip = _clip(pipe)
    results = {}
    for kind, make in SPLITS.items():
        place = ChainPlace(make(world), rank)
        for name, config in CONFIGS.items():
            resume = None
            if "resume" in config:  # one process's checkpoint, cut to this worker's rows
                _, checkpoints, _ = _edit(pipe, clip, config)
                resume = checkpoints[config["resume"]].cut(place.positions)
            final, _, store = _edit(pipe, clip, config, place, resume)
            counts = store.exchange.counts
            results[kind, name] = (final, counts.bytes_sent, counts.messages_sent)
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    pipe = load_pipeline("tiny", torch_dtype=torch.float64)
    clip = _clip(pipe)
    return {name: _edit(pipe, clip, config)[0] for name, config in CONFIGS.items()}


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w} workers")
def split_run(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"chain{world}")
    mp.start_processes(
        _worker, args=(world, _free_port(), str(out)), nprocs=world, start_method="spawn"
    )
    parts = [torch.load(out / f"{rank}.pt") for rank in range(world)]
    return world, parts


@pytest.mark.integration
@pytest.mark.parametrize("kind", list(SPLITS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_split_chain_equals_one_process(single, split_run, kind, name, report_measurement):
    world, parts = split_run
    anchor = CONFIGS[name].get("anchor", "first")
    gathered = torch.cat([part[kind, name][0] for part in parts])
    rows = gathered[np.argsort(SPLITS[kind](world).gathered_order())]  # processing order
    joined = rows[np.argsort(anchor_order(FRAMES, anchor))]
    gap = (joined - single[name]).abs().max().item()
    report_measurement(f"{world} workers, {kind} split, {name}: max |chain - one", f"{gap:.2e}")
    assert joined.shape == single[name].shape
    assert gap <= TOLERANCE
    assert sum(part[kind, name][1] for part in parts) > 0  # the workers talked (features, x0)


def test_splits_even_and_dealt():
    split = ChainSplit.even(7, 3)
    assert [split.positions(r) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [split.owner(p) for p in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert ChainSplit.even(2, 5).workers == 2  # never an empty worker
    dealt = ChainSplit.dealt(10, 2, 3)  # runs 0-2, 3-5, 6-8, 9 dealt to 0, 1, 0, 1
    assert dealt.runs(0) == [range(0, 3), range(6, 9)] and dealt.runs(1) == [
        range(3, 6),
        range(9, 10),
    ]
    assert [dealt.owner(p) for p in range(10)] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    assert dealt.gathered_order() == [0, 1, 2, 6, 7, 8, 3, 4, 5, 9]
    assert ChainSplit.dealt(6, 2, 3) == ChainSplit.even(6, 2)  # one run each: as even
    assert chunks_of(range(3, 8), 2) == [range(3, 5), range(5, 7), range(7, 8)]


def test_messages_per_step_are_the_anchor_and_the_previous_row():
    """anchor+previous: a worker reads, per layer, the anchor (from worker 0) and the row
    before its run, once per step, however many chunks read them."""
    from pix2video.core.attention import reference_plan

    split = ChainSplit.even(9, 3)  # 0-2, 3-5, 6-8
    plan = reference_plan(9, "anchor+previous")
    from_first = _reading_order(split, 2, plan, 2, 1, set(split.positions(0)))
    assert from_first == [("features", 0, 0), ("features", 0, 1)]  # the anchor, each layer once
    from_second = _reading_order(split, 2, plan, 2, 1, set(split.positions(1)))
    assert from_second == [("features", 5, 0), ("features", 5, 1), ("x0", 5)]
