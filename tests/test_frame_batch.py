"""Frame-batched editing (`--frame-batch N`): several frames per UNet call, step by step.

The exactness claims run the tiny models in float64: its CPU kernels give the same rows
whatever the batch, so batched and one-at-a-time agree to float reassociation (measured 0);
any wrong row read (a frame attending to the wrong features, a guidance target from the
wrong frame) would show as a gap of order 1. In float32 the CPU's kernels round
differently per batch size (from the first linear layer on, ~1e-7) and the random tiny
model amplifies that, so there the gap is reported and bounded loosely.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from diffusers import ControlNetModel
from support import cockatoo_settings

from pix2video import EditSettings, edit_clip, load_pipeline
from pix2video.cli import main
from pix2video.core.attention import ATTEND_MODES, FeatureStore, reference_plan
from pix2video.core.edit_loop import chunked_calls
from pix2video.core.frame_chain import chunks_of
from pix2video.core.options import EditOptions, parse_frame_batch
from pix2video.errors import InputError
from pix2video.pipelines.frame_batch import default_inversion_batch, frames_that_fit, model_rows
from pix2video.pipelines.sd15_controlnet import Pix2VideoControlNetPipeline

FRAMES, STEPS = 7, 3  # 7 is a multiple of none of the chunk sizes below
BATCHES = (2, 3, 8)
TOLERANCE = 1e-5  # the bound on final latents; measured: 0 in float64


@pytest.fixture(scope="module")
def pipe64():
    """The bundled tiny SD2-depth model in float64 (batch-invariant CPU kernels)."""
    return load_pipeline("tiny", torch_dtype=torch.float64)


@pytest.fixture(scope="module")
def clip64(pipe64):
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(FRAMES, 4, 8, 8, generator=g, dtype=torch.float64)
    depth = torch.rand(FRAMES, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    prompts = pipe64.encode_prompt("a red sports car"), pipe64.encode_prompt("")
    return x_t, depth, prompts


@pytest.fixture(scope="module")
def run64(pipe64, clip64):
    """Memoised `pipe64.edit` on the 7-frame clip: (final latents, UNet call batch sizes)."""
    memo: dict = {}
    x_t, depth, (prompt, negative) = clip64

    def run(**kwargs):
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if key not in memo:
            kwargs.setdefault("num_inference_steps", STEPS)
            calls: list[int] = []
            hook = pipe64.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
            try:
                final, store = pipe64.edit(x_t, depth, prompt, negative, **kwargs)
            finally:
                hook.remove()
            memo[key] = final, calls, store
        return memo[key]

    return run


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("attend", ATTEND_MODES)
@pytest.mark.parametrize("n", BATCHES)
def test_frame_batched_equals_one_at_a_time(run64, attend, n, report_measurement):
    """Guidance on (weight 100, 2 of 3 steps); every attend mode; 7 frames in chunks of n."""
    one, one_calls, _ = run64(attend=attend)
    batched, calls, store = run64(attend=attend, frame_batch=n)
    measured = gap(batched, one)
    report_measurement(
        f"frame-batch {n} vs 1 ({attend}, float64), max |dlatent|", f"{measured:.2e}"
    )
    assert measured <= TOLERANCE
    assert store.chunk_size == min(n, FRAMES)
    # steps x ceil(frames / n) editing calls, 2 latents (the CFG branches) per frame
    chunks = [min(n, FRAMES - k) for k in range(0, FRAMES, n)]
    assert calls == [2 * c for c in chunks] * STEPS
    assert len(calls) == STEPS * math.ceil(FRAMES / n)
    assert one_calls == [2] * FRAMES * STEPS
    # the comparison can fail: another attend mode is far from it
    other = "anchor" if attend != "anchor" else "anchor+previous"
    assert gap(batched, run64(attend=other)[0]) > 1e-3


def test_frame_batched_with_anchor_last(run64):
    one = run64(anchor="last")[0]
    for n in (3, 8):
        assert gap(run64(anchor="last", frame_batch=n)[0], one) <= TOLERANCE
    assert gap(one, run64()[0]) > 1e-3  # the anchor matters, so the check can fail


def test_frame_batched_without_classifier_free_guidance(run64):
    one = run64(guidance_scale=1.0)[0]
    batched, calls, _ = run64(guidance_scale=1.0, frame_batch=3)
    assert gap(batched, one) <= TOLERANCE
    assert calls == [3, 3, 1] * STEPS  # one latent per frame


def test_frame_batched_local_edit(run64, clip64):
    """A mask: after every step the latent outside it is the frame's own source latent."""
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(FRAMES, 1, 8, 8, generator=g) > 0.5
    source = torch.randn(FRAMES, STEPS, 4, 8, 8, generator=g, dtype=torch.float64)
    one = run64(masks=masks, source_latents=source)[0]
    batched = run64(masks=masks, source_latents=source, frame_batch=3)[0]
    assert gap(batched, one) <= TOLERANCE
    outside = ~masks.expand(-1, 4, -1, -1)
    assert torch.equal(batched[outside], source[:, -1][outside])
    assert gap(one, run64()[0]) > 1e-3


@pytest.mark.parametrize("resume_with", [1, 2, 8])
def test_checkpoint_of_one_frame_batch_resumes_with_another(pipe64, clip64, run64, resume_with):
    x_t, depth, (prompt, negative) = clip64
    checkpoints = []
    full, _ = pipe64.edit(
        x_t,
        depth,
        prompt,
        negative,
        num_inference_steps=STEPS,
        frame_batch=3,
        on_step_end=checkpoints.append,
    )
    assert [c.step for c in checkpoints] == list(range(STEPS))
    assert gap(full, run64(frame_batch=3)[0]) == 0  # the checkpoint hook changes nothing
    before = pipe64.unet_evaluations
    resumed, _ = pipe64.edit(
        x_t,
        depth,
        prompt,
        negative,
        num_inference_steps=STEPS,
        frame_batch=resume_with,
        resume=checkpoints[0],
    )
    assert pipe64.unet_evaluations - before == 2 * FRAMES * (STEPS - 1)
    assert gap(resumed, full) <= TOLERANCE
    assert gap(resumed, run64()[0]) <= TOLERANCE


@pytest.mark.bitwise
def test_frame_major_order_keeps_one_frame_per_call(run64):
    """A guidance target at a later step (`step:K`) needs frame-by-frame order: N = 1."""
    one, _, _ = run64(latent_guidance_target="step:2")
    with pytest.warns(UserWarning, match="frame_batch 4 is not used"):
        batched, calls, store = run64(latent_guidance_target="step:2", frame_batch=4)
    assert calls == [2] * FRAMES * STEPS
    assert store.chunk_size == 1
    assert torch.equal(batched, one)


def test_float32_gap_is_rounding(tiny_pipe, clip64, report_measurement):
    """float32 on the CPU: batch-dependent kernel rounding, amplified by the random model."""
    x_t, depth, _ = clip64
    x_t, depth = x_t.float(), depth.float()
    prompt, negative = tiny_pipe.encode_prompt("a red sports car"), tiny_pipe.encode_prompt("")
    one, _ = tiny_pipe.edit(x_t, depth, prompt, negative, num_inference_steps=STEPS)
    batched, _ = tiny_pipe.edit(
        x_t, depth, prompt, negative, num_inference_steps=STEPS, frame_batch=3
    )
    measured = gap(batched, one)
    scale = one.abs().max().item()
    report_measurement(
        "frame-batch 3 vs 1 (float32 CPU), max |dlatent|", f"{measured:.2e} of {scale:.1f}"
    )
    assert measured < 1e-3 * scale  # measured ~7e-5 of the scale


# ---------------------------------------------------------------------------- ControlNet
@pytest.fixture(scope="module")
def controlnet_pipe64(tiny_sd15):
    net = ControlNetModel.from_pretrained(tiny_sd15.controlnets[0])
    pipe = Pix2VideoControlNetPipeline.from_pretrained(tiny_sd15.model, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype=torch.float64)


def test_frame_batched_with_a_controlnet(controlnet_pipe64):
    pipe = controlnet_pipe64
    g = torch.Generator().manual_seed(7)
    frames = 5
    x_t = torch.randn(frames, 4, 8, 8, generator=g, dtype=torch.float64)
    control = torch.rand(frames, 3, 64, 64, generator=g, dtype=torch.float64)
    prompts = pipe.encode_prompt("a red sports car"), pipe.encode_prompt("")

    def run(**kwargs):
        before = pipe.controlnet_evaluations
        final, _ = pipe.edit(x_t, control, *prompts, num_inference_steps=STEPS, **kwargs)
        return final, pipe.controlnet_evaluations - before

    one, one_evaluations = run()
    batched, evaluations = run(frame_batch=2)
    assert gap(batched, one) <= TOLERANCE
    assert evaluations == one_evaluations == 2 * frames * STEPS
    # each frame reads its own control image: reversing them changes the result
    other, _ = pipe.edit(x_t, control.flip(0), *prompts, num_inference_steps=STEPS, frame_batch=2)
    assert gap(other, batched) > 1e-3


# ---------------------------------------------------------------------------- the store
ELEMENT = torch.zeros(2, 4, 8)  # one layer's input of one frame (2 CFG branches)


def drive(store: FeatureStore, frames: int, steps: int) -> list[int]:
    """Step-major chunks through the store with fake features; returns nbytes after each call."""
    trace = []
    order = EditOptions(num_inference_steps=steps, schedule="step").processing_order(frames)
    for positions, step in chunked_calls(order, chunks_of(range(frames), store.chunk_size)):
        with store.chunk_step(positions, step):
            store.put("a", torch.zeros(2 * len(positions), 4, 8))
        trace.append(store.nbytes)
    return trace


ENTRY = ELEMENT.numel() * ELEMENT.element_size()


@pytest.mark.parametrize(
    ("attend", "chunk", "peak_entries"),
    [
        ("anchor+previous", 1, 3),  # anchor, previous, current (as before)
        ("anchor+previous", 3, 3),  # anchor, the boundary row read, the boundary row written
        ("anchor+previous", 7, 0),  # one chunk: every reference is a row of the same call
        ("anchor", 3, 1),
        ("previous", 3, 2),
        ("none", 3, 0),
    ],
)
def test_store_keeps_the_anchor_and_the_boundary_rows(attend, chunk, peak_entries):
    store = FeatureStore(reference_plan(FRAMES, attend), chunk_size=chunk)
    trace = drive(store, FRAMES, STEPS)
    assert store.peak_nbytes == peak_entries * ENTRY
    assert store.nbytes == 0 and trace[-1] == 0


def test_store_keeps_what_later_chunks_draw_in_anchor_random():
    """anchor+random reads earlier chunks: each drawn frame is kept until its last reader ran."""
    frames, chunk = 12, 4
    plan = reference_plan(frames, "anchor+random", seed=1)
    store = FeatureStore(plan, chunk_size=chunk)
    kept = {
        ref
        for position, refs in enumerate(plan)
        for ref in refs
        if ref // chunk != position // chunk
    }
    assert len(kept) > 2  # the seed draws several earlier chunks' frames
    trace = drive(store, frames, 1)
    # after the first chunk: every frame of it that a later chunk reads
    assert trace[0] == len([r for r in kept if r < chunk]) * ENTRY
    assert store.nbytes == 0
    with pytest.raises(ValueError, match="not a chunk"):
        with store.chunk_step(range(1, 3), 0):
            pass


def test_store_refuses_a_chunk_whose_earlier_reference_is_missing():
    store = FeatureStore(reference_plan(6, "anchor+previous"), chunk_size=3)
    with pytest.raises(RuntimeError, match="frame 0's step-0"):
        with store.chunk_step(range(3, 6), 0):
            pass


def test_chunked_calls_group_step_major_order_only():
    step_major = EditOptions(num_inference_steps=2, schedule="step").processing_order(7)
    assert chunked_calls(step_major, chunks_of(range(7), 3)) == [
        (range(0, 3), 0),
        (range(3, 6), 0),
        (range(6, 7), 0),
        (range(0, 3), 1),
        (range(3, 6), 1),
        (range(6, 7), 1),
    ]
    frame_major = EditOptions(num_inference_steps=2, schedule="frame").processing_order(3)
    assert chunked_calls(frame_major, chunks_of(range(3), 3)) == [
        (range(p, p + 1), s) for p, s in frame_major
    ]
    assert chunked_calls(step_major, chunks_of(range(7), 1)) == [
        (range(p, p + 1), s) for p, s in step_major
    ]


def test_model_rows_are_branch_major():
    latent = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 4, 2, 2)
    conditioning = torch.arange(3.0).reshape(3, 1, 1, 1).expand(3, 1, 2, 2) + 10
    text = torch.tensor([[[-1.0]], [[1.0]]])  # [uncond, cond]
    x, c, t = model_rows(latent, conditioning, text)
    assert x[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert c[:, 0, 0, 0].tolist() == [10, 11, 12, 10, 11, 12]
    assert t[:, 0, 0].tolist() == [-1, -1, -1, 1, 1, 1]
    single = model_rows(latent[:1], conditioning[:1], text)
    assert torch.equal(single[0], latent[:1])
    assert single[2] is text


def test_frames_that_fit_leaves_a_margin_and_is_capped_by_the_clip():
    gib = 2**30
    assert (
        frames_that_fit(free_bytes=50 * gib, per_frame_bytes=gib, total_bytes=80 * gib, frames=100)
        == 42
    )
    assert frames_that_fit(50 * gib, gib, 80 * gib, frames=16) == 16
    assert frames_that_fit(8 * gib, 2 * gib, 80 * gib, frames=16) == 1  # never below one


# ---------------------------------------------------------------------------- settings and front ends
@pytest.mark.parametrize(
    ("value", "parsed"), [("auto", "auto"), (" Auto ", "auto"), (4, 4), ("4", 4)]
)
def test_frame_batch_setting_accepts_auto_and_whole_numbers(value, parsed):
    assert parse_frame_batch(value) == parsed
    EditSettings("in.mp4", "a prompt", "out.mp4", frame_batch=value).validate()


@pytest.mark.parametrize("value", [0, -2, "x", "2.5", 2.5, True, None, ""])
def test_frame_batch_setting_rejects_anything_else_in_one_sentence(value):
    with pytest.raises(
        InputError, match=r"^--frame-batch must be 'auto' or a whole number >= 1; got .*\.$"
    ):
        EditSettings("in.mp4", "a prompt", "out.mp4", frame_batch=value).validate()


def test_frame_batch_is_a_batch_column(tmp_path):
    from pix2video.batch.jobs import read_batch

    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,prompt,frame_batch\nclip.mp4,a red car,4\nclip.mp4,a blue car,auto\n")
    batch = read_batch(jobs, tmp_path / "out")
    assert [parse_frame_batch(j.settings.frame_batch) for j in batch.jobs] == [4, "auto"]
    jobs.write_text("input,prompt,frame_batch\nclip.mp4,a red car,0\n")
    with pytest.raises(InputError, match="line 2.*--frame-batch"):
        read_batch(jobs, tmp_path / "out")


def job_settings(tmp_path, **changes) -> EditSettings:
    """The cockatoo at 64 px, 5 frames, 3 steps, a checkpoint after every step."""
    base = cockatoo_settings(
        tmp_path, output=tmp_path / "out.mp4", size="64", max_frames=5, steps=3,
        checkpoint_interval=0.0,
    )  # fmt: skip
    return base.replace(**changes)


def test_job_cancelled_with_one_frame_batch_resumes_with_another(tmp_path, pipelines):
    """The job passes the setting through; a checkpoint written with N=2 resumes with N=3."""
    import threading

    from pix2video.errors import EditCancelled

    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done == 5:  # step 0 of 3 done (chunks of 2, 2, 1)
            cancel.set()

    s = job_settings(tmp_path, frame_batch=2)
    with pytest.raises(EditCancelled):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    assert not s.output.exists()
    pipe = pipelines.get("tiny", "cpu", torch.float32)
    calls: list[int] = []
    hook = pipe.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        resumed = edit_clip(s.replace(frame_batch=3), pipelines=pipelines)
    finally:
        hook.remove()
    assert resumed.editing == "resumed" and resumed.resumed_from_step == 0
    assert resumed.frame_batch == 3
    assert calls == [6, 4] * 2  # steps 1 and 2 of 3, chunks of 3 and 2 frames
    assert resumed.unet_evaluations_editing == 2 * 5 * 2
    assert s.output.exists()


def test_job_auto_on_the_cpu_is_one_frame_per_call(tmp_path, pipelines):
    result = edit_clip(job_settings(tmp_path, max_frames=2, steps=2), pipelines=pipelines)
    assert result.frame_batch == 1


def test_job_says_frame_major_order_keeps_one_frame_per_call(tmp_path, pipelines):
    warnings: list[str] = []
    s = job_settings(
        tmp_path, max_frames=2, steps=2, latent_guidance_target="step:1", frame_batch=2
    )
    result = edit_clip(s, pipelines=pipelines, warn=warnings.append)
    assert result.frame_batch == 1
    assert warnings == [
        "--frame-batch 2 is not used: a guidance target at a later step (step:1) edits the "
        "frames one at a time."
    ]


def test_cli_and_config_file_frame_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("PIX2VIDEO_CACHE_DIR", str(tmp_path / "cache"))
    s = job_settings(tmp_path, max_frames=3, steps=2)
    args = [
        "edit", str(s.input), "-p", s.prompt, "-o", str(tmp_path / "out"), "--source-prompt",
        s.source_prompt, "--model", "tiny", "--size", "64", "--max-frames", "3", "--steps", "2",
        "--no-cache", "--stats-json", str(tmp_path / "stats.json"), "--frame-batch", "2",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frame_batch"] == 2
    assert stats["unet_evaluations_editing"] == 2 * 3 * 2
    config = tmp_path / "config.yaml"
    config.write_text("frame-batch: 0\n")  # a config file's key, like any edit option
    bad = CliRunner().invoke(main, [*args[:-2], "--config", str(config)])
    assert bad.exit_code != 0
    assert "--frame-batch must be 'auto' or a whole number >= 1; got '0'." in bad.output
    assert "Traceback" not in bad.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 3  # the good run's frames only


@pytest.mark.parametrize(
    ("field", "setting"), [("", "auto"), ("auto", "auto"), (" 3 ", 3), ("x", "x")]
)
def test_page_field_becomes_the_setting(tmp_path, field, setting):
    """The Advanced field "Frames per UNet call" (`#frame-batch`): empty means auto."""
    pytest.importorskip("gradio")
    from pix2video.ui import ServerOptions
    from pix2video.ui.app import EditorApp
    from pix2video.ui.form import FORM_FIELDS, settings_from_form

    assert "frame_batch" in FORM_FIELDS
    app = EditorApp(ServerOptions(model="tiny", examples=[]), tmp_path)
    form = {"video": "clip.mp4", "prompt": "a red car", "frame_batch": field}
    settings = settings_from_form(form, app.options, output=tmp_path / "out.mp4")
    assert settings.frame_batch == setting
    if setting == "x":
        with pytest.raises(InputError, match="--frame-batch"):
            settings.validate()


def test_default_inversion_batch_by_device():
    assert default_inversion_batch("cpu") == 1
    assert default_inversion_batch("cuda") == 8
    assert default_inversion_batch(torch.device("cuda", 1)) == 8
