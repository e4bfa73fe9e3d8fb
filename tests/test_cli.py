"""Tests of the `pix2video` command line on the real clips in ../shared/data.

Runs use the bundled random-weight model (`--model tiny`), tiny sizes and 2-3 steps; the
pictures are meaningless but every code path (reading, depth, inversion, editing, caching,
writing with audio) is the real one. Commands run in-process through click's CliRunner on
the real command group (torch is imported once), error cases included: their exit code, one
sentence and no traceback are what the command group itself prints. A few runs prove the
installed entry point in a real subprocess (`integration`): the console script's end-to-end
edit, `--help` and an error exit, and the interruptions (signals to a running process).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import BLACKSWAN, COCKATOO, G1, REALSHORT, TINY_BLIP, need, png_frames

from pix2video import cli
from pix2video.cli.errors import INTERRUPTED
from pix2video.core.options import ATTEND_MODES
from pix2video.errors import InputError
from pix2video.job import EditResult, edit_clip
from pix2video.media import probe, read_audio_info, read_clip
from pix2video.models import DEFAULT_MODEL
from pix2video.settings import EditSettings

CONSOLE_SCRIPT = Path(sys.executable).parent / "pix2video"

FAST = ["--model", "tiny", "--steps", "2", "--source-prompt", "a photo"]


def env(tmp_path: Path) -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PIX2VIDEO_CACHE_DIR=str(tmp_path / "default-cache"),  # never the user's cache
        PYTHONWARNINGS="default",  # library warnings must still not reach the user
        # The tiny model runs fastest on one thread, and on a busy 2-core machine torch's
        # OpenMP threads spin against other processes (measured: 64 s instead of 3 s).
        OMP_NUM_THREADS="1",
    )
    return out


def run_subprocess(args, tmp_path: Path, script: bool = False, timeout: float = 180):
    command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "pix2video.cli"]
    return subprocess.run(
        command + [str(a) for a in args],
        env=env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PIX2VIDEO_CACHE_DIR", str(tmp_path / "default-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see `env`
    yield CliRunner()
    torch.set_num_threads(threads)


def invoke(runner: CliRunner, args, code: int = 0):
    result = runner.invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def stats(path: Path) -> dict:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- help


def test_help_lists_every_option_with_its_default(runner):
    result = runner.invoke(cli.main, ["edit", "--help"], terminal_width=400, max_content_width=400)
    assert result.exit_code == 0
    text = result.output
    command = cli.main.commands["edit"]
    ctx = command.make_context("edit", ["x", "-p", "p", "-o", "o.mp4"])
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        for opt in param.opts:
            assert re.search(rf"(^|[\s,]){re.escape(opt)}\b", text), opt
        record = param.get_help_record(ctx)
        assert record is not None and record[1].strip(), f"{param.name} has no help"
        if not param.is_flag and not param.required:
            assert "default:" in record[1], f"{param.name} shows no default"
    for default in (
        "or auto (long side 1024 for SDXL models, 512 for others)",
        "[default: 50; 1<=x<=1000]",
        "[default: 7.5]",
        "[default: 0]",
        "[default: anchor+previous]",
        "[default: first]",
        "[default: 100.0; x>=0]",
        "(steps//2+1)",
        "[default: same-step]",
        "[default: stabilityai/stable-diffusion-2-depth]",
        "auto: Salesforce/blip-image-captioning-base, or the bundled tiny-blip",
        "[default: auto]",
        "[default: float32]",
        "(caption of the anchor frame)",
        "(the model's depth estimator)",
        "multiples of 8",
    ):
        assert default in text, default
    top = runner.invoke(cli.main, ["--help"])
    assert top.exit_code == 0 and "edit" in top.output
    attend = next(p for p in command.params if p.name == "attend")
    assert tuple(attend.type.choices) == ATTEND_MODES


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_console_script_cockatoo_mp4_keeps_fps_aspect_audio_and_saves_latents(tmp_path):
    need(COCKATOO)
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed")
    out, latents, report = tmp_path / "out.mp4", tmp_path / "lat", tmp_path / "stats.json"
    args = ["edit", COCKATOO, "-p", "a golden parrot", "-o", out, *FAST, "--size", "128"]
    args += ["--start", "2s", "--max-frames", "4", "--save-latents", latents]
    args += ["--cache-dir", tmp_path / "cache", "--stats-json", report]
    proc = run_subprocess(args, tmp_path, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert "Loading" not in proc.stderr  # the libraries' own progress bars are off
    # summary: frames, size, time and UNet evaluations per frame, where the output went
    assert "Edited 4 frames at 128x72" in proc.stdout
    assert "s per frame; 6 UNet evaluations per frame: inversion 2, editing 4" in proc.stdout
    assert f"Wrote {out} (4 frames, 128x72, 20 fps, with audio)." in proc.stdout

    info = probe(out)
    assert (info["width"], info["height"]) == (128, 72)  # 16:9 kept on the latent grid of 8
    assert info["fps"] == pytest.approx(20.0)
    assert info["has_audio"]
    clip = read_clip(out)
    assert len(clip.frames) == 4
    audio = read_audio_info(out)
    assert audio is not None
    assert audio["duration"] == pytest.approx(4 / 20, abs=0.05)

    # --save-latents: index in the input = source frame numbers 40..43 (2 s at 20 fps)
    for sub in ("inverted", "final"):
        names = sorted(p.name for p in (latents / sub).iterdir())
        assert names == ["000040.npy", "000041.npy", "000042.npy", "000043.npy"]
        for name in names:
            array = np.load(latents / sub / name)
            assert array.dtype == np.float32 and array.shape == (1, 4, 9, 16)
            assert np.isfinite(array).all()
    assert not np.array_equal(
        np.load(latents / "inverted" / "000040.npy"), np.load(latents / "final" / "000040.npy")
    )
    report_data = stats(report)
    assert report_data["frame_indices"] == [40, 41, 42, 43]
    assert report_data["unet_evaluations"] == 4 * (2 + 2 * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_stride_halves_the_frame_rate_and_audio_follows(runner, tmp_path):
    need(COCKATOO)
    out = tmp_path / "s2.mp4"
    args = ["edit", COCKATOO, "-p", "x", "-o", out, *FAST, "--size", "64", "--stride", "2"]
    invoke(runner, args + ["--max-frames", "3", "--no-cache", "-q"])
    info = probe(out)
    assert info["fps"] == pytest.approx(10.0)
    assert len(read_clip(out).frames) == 3
    assert read_audio_info(out)["duration"] == pytest.approx(3 / 10, abs=0.05)


def test_avi_to_gif(runner, tmp_path):
    need(G1)
    out = tmp_path / "g1.gif"
    result = invoke(
        runner, ["edit", G1, "-p", "x", "-o", out, *FAST, "--size", "128", "--max-frames", "3"]
    )
    assert "Wrote" in result.stdout
    clip = read_clip(out)
    assert len(clip.frames) == 3
    assert clip.size == (128, 96)  # 400x300 at long side 128: 4:3 kept
    assert clip.fps == pytest.approx(25.0)


def test_mp4_without_audio_to_webm(runner, tmp_path):
    need(REALSHORT)
    out = tmp_path / "tree.webm"
    args = ["edit", REALSHORT, "-p", "x", "-o", out, *FAST, "--size", "128", "--end", "3"]
    invoke(runner, args + ["-q"])
    clip = read_clip(out)
    assert len(clip.frames) == 3
    assert clip.size == (128, 96)
    # webm keeps millisecond timestamps, so 29.97 fps reads back only to about 0.1 fps
    assert clip.fps == pytest.approx(30000 / 1001, abs=0.1)


def test_frame_folder_to_png_folder_with_latents_named_by_input_position(runner, tmp_path):
    need(BLACKSWAN)
    out, latents = tmp_path / "frames", tmp_path / "lat"
    args = ["edit", BLACKSWAN, "-p", "x", "-o", out, *FAST, "--size", "128", "--max-frames", "3"]
    invoke(runner, args + ["--start", "5", "--stride", "2", "--save-latents", latents])
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert all(f.shape == (128, 128, 3) for f in png_frames(out))  # the frames are 512x512
    for sub in ("inverted", "final"):
        assert sorted(p.name for p in (latents / sub).iterdir()) == [
            "000005.npy",
            "000007.npy",
            "000009.npy",
        ]
        assert np.load(latents / sub / "000007.npy").shape == (1, 4, 16, 16)
    # a second run may replace an earlier --save-latents folder, never a foreign one
    invoke(runner, args + ["--save-latents", latents, "-q"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    bad = invoke(runner, args + ["--save-latents", tmp_path / "mine"], code=2)
    assert "already contains other files" in bad.stderr


def test_keep_source_size_side_by_side_and_anchor_last_caption(runner, tmp_path):
    need(G1)
    need(TINY_BLIP)
    out = tmp_path / "sbs"
    args = ["edit", G1, "-p", "x", "-o", out, "--model", "tiny", "--steps", "2", "--size", "64"]
    args += ["--max-frames", "2", "--keep-source-size", "--side-by-side", "--anchor", "last"]
    result = invoke(runner, args + ["--captioner", TINY_BLIP, "--no-cache"])
    frames = png_frames(out)
    assert len(frames) == 2 and all(f.shape == (300, 800, 3) for f in frames)
    assert "caption of frame 1" in result.stdout  # the anchor is the last selected frame
    # the left half is the source frame
    source = read_clip(G1, max_frames=2).frames
    assert np.abs(frames[0][:, :400].astype(int) - source[0].astype(int)).mean() < 2


def test_caption_is_used_and_printed_when_source_prompt_is_omitted(runner, tmp_path, monkeypatch):
    need(BLACKSWAN)
    need(TINY_BLIP)
    from pix2video.pipelines.caption import caption_frame

    out, report = tmp_path / "out", tmp_path / "s.json"
    args = ["edit", BLACKSWAN, "-p", "a crystal swan", "-o", out, "--model", "tiny"]
    args += ["--steps", "2", "--size", "64", "--max-frames", "2", "--captioner", TINY_BLIP]
    result = invoke(runner, args + ["--cache-dir", tmp_path / "c", "--stats-json", report])
    expected = caption_frame(read_clip(BLACKSWAN, max_frames=1).frames[0], str(TINY_BLIP))
    assert expected.strip()
    assert stats(report)["source_prompt"] == expected
    assert stats(report)["captioned"] is True
    assert f'Source prompt (caption of frame 0): "{expected}"' in result.stdout
    assert f'Source prompt (BLIP caption): "{expected}"' in result.stdout
    # cached: the second run does not caption again
    import pix2video.pipelines.caption

    def no_captioning(*args, **kwargs):
        raise AssertionError("captioned again")

    monkeypatch.setattr(pix2video.pipelines.caption, "caption_frame", no_captioning)
    second = invoke(runner, args + ["--cache-dir", tmp_path / "c", "-p", "another edit"])
    assert f'"{expected}"' in second.stdout


def test_empty_caption_asks_for_a_source_prompt(monkeypatch, tmp_path):
    need(BLACKSWAN)
    import pix2video.pipelines.caption

    monkeypatch.setattr(pix2video.pipelines.caption, "caption_frame", lambda *a, **k: "  ")
    settings = EditSettings(
        input=BLACKSWAN, prompt="x", output=tmp_path / "o.mp4", model="tiny", size="64"
    )
    settings.max_frames, settings.steps, settings.no_cache = 1, 2, True
    with pytest.raises(InputError, match="--source-prompt"):
        edit_clip(settings)
    assert not (tmp_path / "o.mp4").exists()


def test_caption_frame_with_tiny_blip():
    need(TINY_BLIP)
    from pix2video.errors import ModelNotAvailableError
    from pix2video.pipelines.caption import caption_frame

    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    text = caption_frame(frame, str(TINY_BLIP))
    assert isinstance(text, str) and text == caption_frame(frame, str(TINY_BLIP))
    assert text == " ".join(text.split())
    with pytest.raises(InputError, match="uint8"):
        caption_frame(frame.astype(np.float32), str(TINY_BLIP))
    with pytest.raises(ModelNotAvailableError, match="captioning model"):
        caption_frame(frame, "/nonexistent/blip")


def test_depth_dir_is_used_and_a_mismatching_one_is_an_error(runner, tmp_path):
    need(BLACKSWAN)
    # two depth folders for frames 000000/000001 (512x512 -> square maps, any resolution)
    y, x = np.mgrid[0:48, 0:48].astype(np.float32)
    for name, depth in (("near", y), ("far", x)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(2):
            np.save(folder / f"{i:06d}.npy", depth + i)
    runs = {}
    for name in ("near", "far"):
        out, latents, report = (
            tmp_path / f"o-{name}",
            tmp_path / f"l-{name}",
            tmp_path / f"{name}.json",
        )
        args = ["edit", BLACKSWAN, "-p", "x", "-o", out, *FAST, "--size", "128"]
        args += ["--max-frames", "2", "--depth-dir", tmp_path / name, "--save-latents", latents]
        invoke(runner, args + ["--cache-dir", tmp_path / "c", "--stats-json", report, "-q"])
        assert stats(report)["depth_computed"] == 2
        runs[name] = np.load(latents / "inverted" / "000001.npy")
    assert not np.allclose(runs["near"], runs["far"])  # the maps, not the estimator, were used

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for i in range(2):
        np.save(wrong / f"{i:06d}.npy", np.ones((30, 50), np.float32))
    out = tmp_path / "bad.mp4"
    args = ["edit", BLACKSWAN, "-p", "x", "-o", out, *FAST, "--max-frames", "2"]
    result = invoke(runner, args + ["--depth-dir", wrong], code=2)
    assert "aspect ratios differ" in result.stderr and not out.exists()


@pytest.mark.bitwise
def test_new_prompt_reuses_inversion_and_same_command_reuses_everything(runner, tmp_path):
    need(G1)
    cache = tmp_path / "cache"
    base = ["edit", G1, *FAST, "--size", "64", "--max-frames", "3", "--cache-dir", cache]
    first = invoke(
        runner, base + ["-p", "a", "-o", tmp_path / "a", "--stats-json", tmp_path / "1.json"]
    )
    assert "inversion: 0 cached, 3 computed" in first.stdout
    s1 = stats(tmp_path / "1.json")
    assert s1["inversion_computed"] == 3 and s1["unet_evaluations_inversion"] == 3 * 2

    second = invoke(
        runner, base + ["-p", "b", "-o", tmp_path / "b", "--stats-json", tmp_path / "2.json"]
    )
    assert "inversion: 3 cached, 0 computed" in second.stdout
    s2 = stats(tmp_path / "2.json")
    assert (s2["inversion_cached"], s2["inversion_computed"]) == (3, 0)
    assert (s2["depth_cached"], s2["depth_computed"]) == (3, 0)
    assert s2["unet_evaluations_inversion"] == 0 and s2["unet_evaluations_editing"] == 3 * 2 * 2

    again = invoke(
        runner, base + ["-p", "a", "-o", tmp_path / "a2", "--stats-json", tmp_path / "3.json"]
    )
    assert "editing: cached (final latents)" in again.stdout
    assert stats(tmp_path / "3.json")["unet_evaluations"] == 0
    assert all(
        np.array_equal(p, q)
        for p, q in zip(png_frames(tmp_path / "a"), png_frames(tmp_path / "a2"), strict=True)
    )
    assert not np.array_equal(png_frames(tmp_path / "a")[1], png_frames(tmp_path / "b")[1])
    assert list((cache / "v1" / "checkpoint").glob("*.pt")) == []  # finished: final kept instead

    fresh = tmp_path / "fresh"
    invoke(
        runner, base + ["-p", "a", "-o", fresh, "--no-cache", "--cache-dir", tmp_path / "unused"]
    )
    assert not (tmp_path / "unused").exists()
    assert all(
        np.array_equal(p, q)
        for p, q in zip(png_frames(tmp_path / "a"), png_frames(fresh), strict=True)
    )


# --------------------------------------------------------------------------- config files


def fake_run(monkeypatch) -> dict:
    seen = {}

    def run(options, **callbacks):
        seen["options"] = options
        return EditResult(
            output=str(options.output),
            frames=1,
            frame_indices=[0],
            size=(64, 64),
            output_size=(64, 64),
            fps=25.0,
            has_audio=False,
            source_prompt="s",
            captioned=False,
            device="cpu",
            dtype="float32",
            steps=options.steps,
            seconds={"total": 1.0},
        )

    monkeypatch.setattr("pix2video.cli.edit.edit_clip", run)
    return seen


def test_yaml_config_values_are_taken_and_the_command_line_wins(runner, tmp_path, monkeypatch):
    seen = fake_run(monkeypatch)
    config = tmp_path / "job.yaml"
    config.write_text(
        "prompt: a crystal swan\n"
        "source-prompt: a black swan\n"
        "steps: 7\n"
        "guidance_scale: 3.5\n"
        "size: 128x64\n"
        "attend: anchor\n"
        "side-by-side: true\n"
        "max-frames: 3\n"
        "latent-guidance-target: 'step:2'\n"
    )
    for order in (["--config", config, "--steps", "9"], ["--steps", "9", "--config", config]):
        invoke(runner, ["edit", "in.mp4", "-o", "out.mp4", *order, "--max-frames", "2"])
        o = seen["options"]
        assert (o.prompt, o.source_prompt) == ("a crystal swan", "a black swan")
        assert o.steps == 9 and o.max_frames == 2  # the command line overrides the file
        assert o.guidance_scale == 3.5 and isinstance(o.guidance_scale, float)
        assert (o.size, o.attend, o.side_by_side) == ("128x64", "anchor", True)
        assert o.latent_guidance_target == "step:2"
        assert o.negative_prompt == "" and o.model == DEFAULT_MODEL  # untouched defaults


def test_toml_config_with_command_table(runner, tmp_path, monkeypatch):
    seen = fake_run(monkeypatch)
    config = tmp_path / "job.toml"
    config.write_text(
        'steps = 5\nmodel = "tiny"\n\n'
        '[edit]\nprompt = "a gold parrot"\nlatent-guidance-weight = 0\nsteps = 6\n\n'
        "[eval]\nsomething = 1\n"
    )
    invoke(runner, ["edit", "in.mp4", "-o", "o.gif", "--config", config])
    o = seen["options"]
    assert (o.prompt, o.steps, o.model, o.latent_guidance_weight) == (
        "a gold parrot",
        6,
        "tiny",
        0.0,
    )
    invoke(runner, ["edit", "in.mp4", "-o", "o.gif", "--config", config, "-p", "other"])
    assert seen["options"].prompt == "other"


def test_config_errors_are_one_sentence(runner, tmp_path, monkeypatch):
    fake_run(monkeypatch)
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("promt: typo\n")
    result = invoke(runner, ["edit", "in.mp4", "-o", "o.mp4", "--config", bad_key], code=2)
    assert "unknown key 'promt'" in result.stderr
    broken = tmp_path / "b.toml"
    broken.write_text("steps = = 3\n")
    result = invoke(runner, ["edit", "in.mp4", "-o", "o.mp4", "--config", broken], code=2)
    assert "not valid TOML" in result.stderr
    result = invoke(
        runner, ["edit", "in.mp4", "-o", "o.mp4", "--config", tmp_path / "no.yaml"], code=2
    )
    assert "does not exist" in result.stderr
    assert all(len(r.strip().splitlines()) == 1 for r in [result.stderr])


# --------------------------------------------------------------------------- errors


def _error_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    (tmp / "text.mp4").write_text("this is not a video\n")
    (tmp / "empty").mkdir()
    (tmp / "trunc.mp4").write_bytes(COCKATOO.read_bytes()[:30000])
    (tmp / "depth").mkdir()
    np.save(tmp / "depth" / "000007.npy", np.ones((30, 40), np.float32))
    long_prompt = " ".join(["a very long prompt about a swan"] * 20)
    return {
        "missing file": ([tmp / "missing.mp4"], "does not exist"),
        "text file named .mp4": ([tmp / "text.mp4"], "is not a video FFmpeg can read"),
        "empty folder": ([tmp / "empty"], "contains no images"),
        "truncated video": ([tmp / "trunc.mp4"], "is not a video FFmpeg can read"),
        "start beyond the clip": ([G1, "--start", "100"], "is beyond the clip's 16 frames"),
        "odd size": ([G1, "--size", "100x100"], "multiples of 8"),
        "depth dir not matching": ([G1, "--depth-dir", tmp / "depth"], "has no '000000.npy'"),
        "missing model folder": ([G1, "--model", "/nonexistent/folder"], "does not exist"),
        "unknown hub model": ([G1, "--model", "nobody/no-such-model"], "not available offline"),
        "prompt too long": ([G1, "-p", long_prompt], "tokens"),
        "unknown output type": ([G1, "-o", tmp / "out.avi"], "unknown output type"),
        "half precision on cpu": ([G1, "--dtype", "float16", "--device", "cpu"], "needs a GPU"),
        "bad guidance target": ([G1, "--latent-guidance-target", "soon"], "'step:K'"),
        "missing prompt": ([G1, "-p", None], "Missing option '-p'"),
        "bad steps": ([G1, "--steps", "0"], "Invalid value for '--steps'"),
    }


ERROR_NAMES = [
    "missing file",
    "text file named .mp4",
    "empty folder",
    "truncated video",
    "start beyond the clip",
    "odd size",
    "depth dir not matching",
    "missing model folder",
    "unknown hub model",
    "prompt too long",
    "unknown output type",
    "half precision on cpu",
    "bad guidance target",
    "missing prompt",
    "bad steps",
]


def error_args(tmp_path: Path, case: str) -> tuple[list, str, Path]:
    """The `edit` command line of an error case (fast settings for the rest), the phrase its
    message must hold, and the output it must not write."""
    args, phrase = _error_cases(tmp_path)[case]
    output = tmp_path / "out.mp4"
    if "-o" not in args:
        args = [*args, "-o", output]
    if "-p" not in args:
        args = [*args, "-p", "a swan"]
    elif None in args:  # the case leaves the prompt out
        args = args[: args.index("-p")] + args[args.index("-p") + 2 :]
    return ["edit", *args, *_defaults(args), "--cache-dir", tmp_path / "cache"], phrase, output


def assert_one_sentence_exit_2(code: int, stdout: str, stderr: str, phrase: str) -> None:
    """Exit code 2 and one line on stderr: "Error: ...", a sentence holding `phrase`."""
    assert code == 2, (stdout, stderr)
    assert phrase in stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert lines[0].endswith((".", ")")), lines[0]


@pytest.mark.parametrize("case", ERROR_NAMES)
def test_errors_are_one_sentence_without_traceback_or_output(runner, tmp_path, monkeypatch, case):
    need(COCKATOO)
    need(G1)
    monkeypatch.chdir(tmp_path)
    args, phrase, output = error_args(tmp_path, case)
    result = runner.invoke(cli.main, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit), result.exception  # no uncaught error
    assert_one_sentence_exit_2(result.exit_code, result.stdout, result.stderr, phrase)
    assert not output.exists() and not (tmp_path / "out.avi").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.integration
def test_installed_entry_point_help_and_an_error_exit(tmp_path):
    """The console script and `python -m pix2video.cli` as a user starts them: the help, and
    an error that exits 2 with one sentence from a real process."""
    need(G1)
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"console script {CONSOLE_SCRIPT} not installed")
    proc = run_subprocess(["--help"], tmp_path, script=True)
    assert proc.returncode == 0, proc.stderr
    assert "edit" in proc.stdout and "Usage: pix2video" in proc.stdout
    args, phrase, output = error_args(tmp_path, "missing file")
    proc = run_subprocess(args, tmp_path)
    assert_one_sentence_exit_2(proc.returncode, proc.stdout, proc.stderr, phrase)
    assert "Warning" not in proc.stderr  # the libraries' warnings do not reach the user
    assert not output.exists()


def _defaults(args: list) -> list:
    """Fast settings for whatever the case does not set itself."""
    extra = []
    for option, value in (("--model", "tiny"), ("--size", "64"), ("--steps", "2")):
        if option not in args:
            extra += [option, value]
    extra += ["--max-frames", "2", "--source-prompt", "x"]
    return extra


def test_partly_damaged_video_warns_and_edits_the_frames_that_decode(runner, tmp_path):
    need(G1)
    damaged = tmp_path / "cut.avi"
    damaged.write_bytes(G1.read_bytes()[:120_000])
    out = tmp_path / "cut.gif"
    result = invoke(runner, ["edit", damaged, "-p", "x", "-o", out, *FAST, "--size", "64"])
    assert "Warning:" in result.stderr and "damaged or truncated" in result.stderr
    decoded = len(read_clip(out).frames)
    assert 0 < decoded < 16
    assert f"Edited {decoded} frames" in result.stdout


def test_unwritable_output_fails_before_any_work(runner, tmp_path, monkeypatch):
    need(G1)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    result = runner.invoke(cli.main, ["edit", str(G1), "-p", "x", "-o", "/nonexistent_dir/out.mp4"])
    assert result.exit_code == 2
    assert "the folder /nonexistent_dir does not exist" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 30  # no model was loaded, nothing computed
    assert not Path("/nonexistent_dir").exists()


def test_output_over_the_input_is_refused(runner, tmp_path):
    need(BLACKSWAN)
    source = tmp_path / "in.png.d"
    source.mkdir()
    for name in ("000000.png", "000001.png"):
        (source / name).write_bytes((BLACKSWAN / name).read_bytes())
    result = invoke(runner, ["edit", source, "-p", "x", "-o", source, *FAST], code=2)
    assert "is the input" in result.stderr


def test_debug_shows_the_traceback(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["edit", tmp_path / "missing.mp4", "-p", "x", "-o", "o.mp4", "--debug"]
    result = runner.invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "VideoError" in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"Error: The input {tmp_path / 'missing.mp4'} does not exist."
    )


# --------------------------------------------------------------------------- interruption


RESUME_STEPS = 20


def resume_args(out: Path, cache: Path, report: Path) -> list:
    return [
        "edit", BLACKSWAN, "-p", "a crystal swan", "--source-prompt", "a black swan",
        "--model", "tiny", "--size", "128", "--max-frames", "4", "--steps", str(RESUME_STEPS),
        "-o", out, "--cache-dir", cache, "--stats-json", report,
        "--checkpoint-interval", "0.5",  # throttled: a checkpoint every few steps
    ]  # fmt: skip


def start_and_stop(args, tmp_path: Path, ready, sig=signal.SIGKILL, timeout: float = 180):
    """Run the CLI and send `sig` as soon as `ready()` holds; returns the finished process."""
    command = [sys.executable, "-m", "pix2video.cli", *[str(a) for a in args]]
    proc = subprocess.Popen(
        command,
        env=env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(sig)
                break
            time.sleep(0.005)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr


def cached(cache: Path, kind: str) -> list[Path]:
    """Finished entries (not the hidden temporaries a write in progress uses)."""
    return sorted(p for p in (cache / "v1" / kind).glob("*.pt") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same command, uninterrupted, with a fresh cache."""
    need(BLACKSWAN)
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_subprocess(resume_args(tmp / "out", tmp / "cache", tmp / "s.json"), tmp)
    assert proc.returncode == 0, proc.stderr
    return png_frames(tmp / "out"), stats(tmp / "s.json")


@pytest.mark.integration
@pytest.mark.bitwise
def test_killed_during_inversion_resumes_without_redoing_finished_frames(tmp_path, uninterrupted):
    cache, out, report = tmp_path / "cache", tmp_path / "out", tmp_path / "s.json"
    args = resume_args(out, cache, report)
    code, _, _ = start_and_stop(args, tmp_path, lambda: len(cached(cache, "inversion")) >= 1)
    assert code == -signal.SIGKILL
    done = len(cached(cache, "inversion"))
    assert 1 <= done < 4 and not out.exists()

    proc = run_subprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"inversion: {done} cached, {4 - done} computed" in proc.stdout
    s = stats(report)
    assert (s["inversion_cached"], s["inversion_computed"]) == (done, 4 - done)
    assert s["unet_evaluations_inversion"] == (4 - done) * RESUME_STEPS
    frames, reference = uninterrupted
    assert reference["unet_evaluations_inversion"] == 4 * RESUME_STEPS
    assert len(png_frames(out)) == 4
    assert all(np.array_equal(a, b) for a, b in zip(png_frames(out), frames, strict=True))


@pytest.mark.integration
@pytest.mark.bitwise
def test_killed_during_editing_resumes_from_the_checkpoint(tmp_path, uninterrupted):
    cache, out, report = tmp_path / "cache", tmp_path / "out", tmp_path / "s.json"
    args = resume_args(out, cache, report)
    code, _, _ = start_and_stop(args, tmp_path, lambda: len(cached(cache, "checkpoint")) >= 1)
    assert code == -signal.SIGKILL
    (checkpoint,) = cached(cache, "checkpoint")
    step = torch.load(checkpoint, weights_only=True)["value"]["step"]
    assert 0 <= step < RESUME_STEPS - 1 and not out.exists()

    proc = run_subprocess(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"editing: resumed after step {step + 1} of {RESUME_STEPS}" in proc.stdout
    s = stats(report)
    assert s["editing"] == "resumed" and s["resumed_from_step"] == step
    assert (s["inversion_computed"], s["depth_computed"]) == (0, 0)
    assert s["unet_evaluations_inversion"] == 0
    assert s["unet_evaluations_editing"] == (RESUME_STEPS - 1 - step) * 4 * 2
    frames, reference = uninterrupted
    assert reference["unet_evaluations_editing"] == RESUME_STEPS * 4 * 2
    assert all(np.array_equal(a, b) for a, b in zip(png_frames(out), frames, strict=True))
    assert cached(cache, "checkpoint") == [] and len(cached(cache, "final")) == 1


@pytest.mark.integration
def test_ctrl_c_exits_130_with_one_line_and_no_output(tmp_path):
    need(BLACKSWAN)
    cache, out = tmp_path / "cache", tmp_path / "out.mp4"
    args = resume_args(out, cache, tmp_path / "s.json")
    code, _, stderr = start_and_stop(
        args, tmp_path, lambda: len(cached(cache, "inversion")) >= 1, sig=signal.SIGINT
    )
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
