"""The edit job (`pix2video.job`) and its settings: one orchestration behind every front end.

Runs use the bundled tiny model on examples/cockatoo.mp4 (16:9) at a small size and few
steps; comparisons between front ends are bitwise (same machine, same code path).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import COCKATOO, cockatoo_settings, png_frames

from pix2video import EditSettings, Pix2VideoPipeline, edit_clip, load_pipeline, preview_anchor
from pix2video.cli import main
from pix2video.errors import EditCancelled, InputError
from pix2video.media import fit_size, read_clip, resize_frames

SIZE, FRAMES, STEPS = "128", 3, 2


def settings(tmp_path: Path, **changes) -> EditSettings:
    """The cockatoo at `SIZE`, `FRAMES` frames and `STEPS` steps, in `tmp_path`."""
    return cockatoo_settings(tmp_path, size=SIZE, max_frames=FRAMES, steps=STEPS).replace(**changes)


# --------------------------------------------------------------------------- settings


@pytest.mark.integration  # a fresh interpreter: nothing imported yet
def test_settings_import_without_torch():
    code = (
        "import sys; from pix2video import EditSettings; "
        "EditSettings('a.mp4', 'p', 'o.mp4').validate(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"guidance_scale": float("nan")}, "--guidance-scale must be a finite number"),
        ({"guidance_scale": float("inf")}, "--guidance-scale must be a finite number"),
        ({"guidance_scale": -1.0}, "--guidance-scale must be between 0 and 100"),
        ({"latent_guidance_weight": float("nan")}, "--latent-guidance-weight must be a finite"),
        ({"steps": 0}, "--steps must be between 1 and 1000"),
        ({"steps": 2.5}, "--steps must be a whole number"),
        ({"stride": 0}, "--stride must be at least 1"),
        ({"max_frames": 0}, "--max-frames must be at least 1"),
        ({"attend": "everyone"}, "--attend must be one of anchor\\+previous, anchor"),
        ({"anchor": "middle"}, "--anchor must be one of first, last"),
        ({"dtype": "float8"}, "--dtype must be one of"),
        ({"latent_guidance_target": "step:x"}, "latent guidance target must be"),
        ({"latent_guidance_target": "step:60"}, "target step must be in 0..1"),
        ({"size": "big"}, "Invalid size"),
        ({"start": "soon"}, "position"),
        ({"prompt": "  "}, "The edit prompt is empty"),
    ],
)
def test_settings_reject_bad_values_in_one_sentence(tmp_path, change, message):
    with pytest.raises(InputError, match=message) as err:
        settings(tmp_path, **change).validate()
    text = str(err.value)
    assert "\n" not in text and text.endswith(".")


def test_settings_from_mapping_takes_option_names_and_rejects_unknown_keys():
    s = EditSettings.from_mapping(
        {"input": "a.mp4", "prompt": "p", "output": "o.mp4", "guidance-scale": 3.0, "max_frames": 4}
    )
    assert (s.guidance_scale, s.max_frames, s.steps) == (3.0, 4, 50)
    with pytest.raises(InputError, match="unknown option 'colour'"):
        EditSettings.from_mapping({"input": "a", "prompt": "p", "output": "o", "colour": 1})
    with pytest.raises(InputError, match="required option 'prompt'"):
        EditSettings.from_mapping({"input": "a", "output": "o"})


def test_bad_guidance_and_schedule_fail_before_any_model_work(tiny_pipe):
    """`check_inputs` covers every argument of `__call__`: no depth or inversion runs first."""
    frames = [np.zeros((64, 64, 3), np.uint8)] * 2
    before = tiny_pipe.unet_evaluations
    bad_calls = [
        {"guidance_scale": float("nan")},
        {"schedule": "sideways"},
        {"latent_guidance_target": "step:9", "num_inference_steps": 2},
        {"latent_guidance_target": "step:1", "num_inference_steps": 2, "schedule": "step"},
        {"latent_guidance_steps": -1},
        {"anchor": "middle"},
        {"depth_maps": np.zeros((3, 64, 64))},
    ]
    for kwargs in bad_calls:
        with pytest.raises(InputError):
            tiny_pipe(frames, "a", "b", **kwargs)
    assert tiny_pipe.unet_evaluations == before
    with pytest.raises(InputError, match="multiples of 8"):
        tiny_pipe([np.zeros((60, 64, 3), np.uint8)], "a", "b")


def test_public_api():
    import pix2video

    assert pix2video.Pix2VideoPipeline is Pix2VideoPipeline
    assert pix2video.load_pipeline is load_pipeline
    for name in pix2video.__all__:
        assert getattr(pix2video, name) is not None


# --------------------------------------------------------------------------- one edit, three front ends


@pytest.mark.bitwise
@pytest.mark.parametrize(
    "variant",
    [{"anchor": "last"}, {"attend": "anchor+random", "seed": 3}],
    ids=["anchor-last", "anchor+random-seed-3"],
)
def test_cli_job_and_pipeline_give_bitwise_identical_frames(tmp_path, pipelines, variant):
    # the command line (in-process, the real click command)
    cli_out = tmp_path / "cli"
    args = [COCKATOO, "-p", "a cockatoo made of blue crystal", "--source-prompt"]
    args += ["a white cockatoo", "--model", "tiny", "--size", SIZE, "--max-frames", FRAMES]
    args += ["--steps", STEPS, "--dtype", "float32", "-o", cli_out, "--cache-dir", tmp_path / "c1"]
    args += ["-q"]
    for key, value in variant.items():
        args += [f"--{key}", value]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    assert result.exit_code == 0, result.output
    # the job function
    job_out = tmp_path / "job"
    edit_clip(
        settings(tmp_path, output=job_out, cache_dir=tmp_path / "c2", **variant),
        pipelines=pipelines,
    )
    # the pipeline on in-memory frames
    clip = read_clip(COCKATOO, max_frames=FRAMES)
    frames = resize_frames(clip.frames, fit_size(*clip.source_size, int(SIZE)))
    pipe = pipelines.get("tiny", "cpu", "float32")
    kwargs = {"num_inference_steps": STEPS, **variant}
    out = pipe(frames, "a cockatoo made of blue crystal", "a white cockatoo", **kwargs)

    from_cli, from_job = png_frames(cli_out), png_frames(job_out)
    assert len(from_cli) == len(from_job) == len(out.frames) == FRAMES
    assert from_cli[0].shape == (72, 128, 3)  # 16:9 kept on the latent grid (multiples of 8)
    for a, b, c in zip(from_cli, from_job, out.frames, strict=True):
        assert np.array_equal(a, b) and np.array_equal(b, c)
    # not trivially equal: frames differ from each other and from another variant
    assert not np.array_equal(from_job[0], from_job[-1])


# --------------------------------------------------------------------------- preview


@pytest.mark.bitwise
@pytest.mark.parametrize("anchor", ["first", "last"])
def test_preview_is_the_anchor_frame_of_the_full_edit(tmp_path, pipelines, anchor):
    s = settings(tmp_path, anchor=anchor)
    preview = preview_anchor(s, pipelines=pipelines)
    anchor_index = 0 if anchor == "first" else FRAMES - 1
    assert preview.frame_index == anchor_index
    assert preview.unet_evaluations == STEPS + 2 * STEPS  # inversion + editing, one frame
    result = edit_clip(s, pipelines=pipelines)
    edited = png_frames(Path(result.output))
    assert np.array_equal(preview.edited, edited[anchor_index])
    assert not np.array_equal(preview.edited, edited[FRAMES - 1 - anchor_index])
    # the full edit reused the preview's depth and inversion of the anchor frame
    assert (result.inversion_cached, result.inversion_computed) == (1, FRAMES - 1)
    assert result.unet_evaluations_inversion == (FRAMES - 1) * STEPS


def test_second_prompt_reuses_depth_and_inversion(tmp_path, pipelines):
    first = edit_clip(settings(tmp_path), pipelines=pipelines)
    second = edit_clip(
        settings(tmp_path, prompt="a cockatoo made of gold", output=tmp_path / "gold"),
        pipelines=pipelines,
    )
    assert first.unet_evaluations == FRAMES * STEPS * 3
    assert second.unet_evaluations_inversion == 0
    assert second.unet_evaluations == second.unet_evaluations_editing == FRAMES * STEPS * 2
    assert (second.depth_cached, second.inversion_cached) == (FRAMES, FRAMES)


# --------------------------------------------------------------------------- progress and cancellation


def test_progress_reports_every_stage_in_order(tmp_path, pipelines):
    events: list[tuple[str, int, int]] = []
    edit_clip(settings(tmp_path), progress=lambda *e: events.append(e), pipelines=pipelines)
    stages = list(dict.fromkeys(stage for stage, _, _ in events))
    assert stages == ["depth", "inversion", "editing", "writing"]
    last = {stage: (done, total) for stage, done, total in events}
    assert last == {
        "depth": (FRAMES, FRAMES),
        "inversion": (FRAMES, FRAMES),
        "editing": (FRAMES * STEPS, FRAMES * STEPS),
        "writing": (FRAMES, FRAMES),
    }


def test_cancelled_job_leaves_a_resumable_cache_and_no_output(tmp_path, pipelines):
    s = settings(tmp_path, steps=4, output=tmp_path / "out.mp4", checkpoint_interval=0.0)
    cancel = threading.Event()
    pipe = pipelines.get("tiny", "cpu", "float32")
    calls_at_cancel = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "editing" and done == 2 * FRAMES:  # after step 2 of 4
            cancel.set()
            calls_at_cancel["n"] = pipe.unet_evaluations

    with pytest.raises(EditCancelled, match="cancelled; finished work is cached"):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    assert pipe.unet_evaluations == calls_at_cancel["n"]  # no UNet evaluation after the request
    assert not s.output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    resumed = edit_clip(s, pipelines=pipelines)
    assert resumed.editing == "resumed" and resumed.resumed_from_step == 1
    assert resumed.unet_evaluations_inversion == 0
    assert resumed.unet_evaluations_editing == 2 * FRAMES * 2
    assert s.output.exists()


def test_cancel_during_inversion_keeps_finished_frames(tmp_path, pipelines):
    s = settings(tmp_path, no_cache=False)
    cancel = threading.Event()

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "inversion" and done == 1:
            cancel.set()

    with pytest.raises(EditCancelled):
        edit_clip(s, progress=progress, cancel=cancel, pipelines=pipelines)
    again = edit_clip(s, pipelines=pipelines)
    assert (again.inversion_cached, again.inversion_computed) == (1, FRAMES - 1)


# --------------------------------------------------------------------------- long clips


def generated_clip(path: Path, frames: int) -> Path:
    """An H.264 clip with audio-free moving content, 96x64 at 24 fps."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        yy, xx = np.mgrid[0:64, 0:96]
        for i in range(frames):
            rgb = np.stack([(xx + 3 * i) % 256, (yy * 4) % 256, np.full_like(xx, 8 * i % 256)], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("side_by_side", [False, True])
def test_frames_held_at_once_do_not_grow_with_the_clip(tmp_path, pipelines, side_by_side):
    """Decoded frames are streamed: a 20-frame clip holds as many at once as a 6-frame one."""
    peaks = {}
    for frames in (6, 20):
        clip = generated_clip(tmp_path / f"clip{frames}.mp4", frames)
        s = settings(
            tmp_path,
            input=clip,
            output=tmp_path / f"out{frames}.mp4",
            max_frames=None,
            steps=1,
            size="64",
            side_by_side=side_by_side,
            no_cache=True,
        )
        result = edit_clip(s, pipelines=pipelines)
        assert result.frames == frames
        peaks[frames] = result.peak_frames_held
    # the anchor frame (source and resized) is kept; then the current frame and, while the
    # next one decodes, the previous one (source and resized; side by side: + the composite)
    assert peaks[6] == peaks[20] <= (8 if side_by_side else 6)
