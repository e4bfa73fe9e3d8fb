"""`pix2video batch`: JOBS files, the local and Ray backends, results, resuming, `--eval`.

Runs use the bundled tiny model on examples/cockatoo.mp4 (and a PNG folder cut from it) at
size 64, 2 frames and 2 steps. The study has 4 jobs, one of them a corrupt file; outputs are
PNG folders compared bitwise with `pix2video edit` on the same inputs and settings. Ray runs
join the run's one local Ray instance (conftest's ``ray_address``, 2 CPUs); each command
runs in a subprocess like a user's, with one torch thread, as the Ray workers have.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import COCKATOO, PROMPT, SOURCE, TINY_CLIP, png_frames, same_frames

from pix2video import cli
from pix2video.atomic import TMP_MARK
from pix2video.batch import Evaluation, LocalBackend, read_batch, run_batch
from pix2video.batch.jobs import DEFAULT_SUFFIX
from pix2video.batch.runner import job_key
from pix2video.errors import InputError
from pix2video.media import read_clip, write_video
from pix2video.ray_cluster import RAY_MISSING

FAST = ["--model", "tiny", "--size", "64", "--max-frames", "2", "--steps", "2"]
STUDY = f"""input,prompt,source_prompt,output,method,attend,latent_guidance_weight
clip.mp4,{PROMPT},{SOURCE},full-clip,full,,
clip.mp4,{PROMPT},{SOURCE},per-frame-clip,per-frame,none,0
frames,a golden bird,a bird,full-frames,full,,
broken.mp4,{PROMPT},{SOURCE},broken,full,,
"""
GOOD = {  # output -> the `pix2video edit` arguments of the same job
    "full-clip": ["clip.mp4", "-p", PROMPT, "--source-prompt", SOURCE],
    "per-frame-clip": [
        "clip.mp4", "-p", PROMPT, "--source-prompt", SOURCE,
        "--attend", "none", "--latent-guidance-weight", "0",
    ],
    "full-frames": ["frames", "-p", "a golden bird", "--source-prompt", "a bird"],
}  # fmt: skip


def env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PIX2VIDEO_CACHE_DIR=str(tmp_path / "default-cache"),  # never the user's cache
        OMP_NUM_THREADS="1",  # as the Ray workers (1 CPU each): same kernels, same bits
    )


def run_pix2video(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pix2video", *map(str, args)],
        env=env(cwd),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def results(out: Path) -> dict[str, dict]:
    """results.jsonl by output name."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["output"]: r for r in map(json.loads, lines)}


def same_outputs(a: Path, b: Path) -> bool:
    """Whether two 2-frame PNG outputs are equal bit for bit."""
    fa = png_frames(a)
    return len(fa) == 2 and same_frames(fa, png_frames(b))


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(f"*{TMP_MARK}*"))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The JOBS file and its inputs (relative paths), and each good job's `edit` output."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "clip.mp4").write_bytes(COCKATOO.read_bytes())
    write_video(folder / "frames", read_clip(COCKATOO, start=6, max_frames=2).frames, fps=25)
    (folder / "broken.mp4").write_bytes(COCKATOO.read_bytes()[:4000])
    (folder / "jobs.csv").write_text(STUDY)
    runner, threads = CliRunner(), torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses and the Ray workers
    try:
        (folder / "edit").mkdir()
        for name, args in GOOD.items():
            out, cache = folder / "edit" / name, folder / "edit-cache"
            argv = ["edit", *args, *FAST, "-o", out, "--cache-dir", cache, "-q"]
            with _chdir(folder):
                result = runner.invoke(cli.main, [str(a) for a in argv])
            assert result.exit_code == 0, result.output
        with _chdir(folder):
            argv = ["edit", str(folder / "broken.mp4"), "-p", PROMPT, "-o", "b", *FAST]
            result = runner.invoke(cli.main, argv)  # absolute: the batch resolves paths
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 2
    (folder / "broken-error.txt").write_text(result.output.strip().removeprefix("Error: "))
    return folder


class _chdir:
    def __init__(self, path: Path) -> None:
        self.path, self.old = path, None

    def __enter__(self) -> None:
        self.old = Path.cwd()
        os.chdir(self.path)

    def __exit__(self, *exc) -> None:
        os.chdir(self.old)


def check_study(study: Path, out: Path) -> dict[str, dict]:
    """The 3 outputs equal `pix2video edit`'s, bitwise; the corrupt clip's sentence recorded."""
    records = results(out)
    assert {k: r["status"] for k, r in records.items()} == {
        "full-clip": "ok",
        "per-frame-clip": "ok",
        "full-frames": "ok",
        "broken": "failed",
    }
    assert records["broken"]["error"] == (study / "broken-error.txt").read_text()
    assert records["broken"]["line"] == 5
    for name in GOOD:
        assert same_outputs(out / name, study / "edit" / name), name
    assert not (out / "broken").exists() and leftovers(out) == []
    summary = (out / "summary.md").read_text()
    assert "4 jobs: 3 ok, 0 skipped, 1 failed." in summary
    assert "| full | 2 |" in summary and "| per-frame | 1 |" in summary
    return records


# --------------------------------------------------------------------------- both backends


@pytest.mark.integration
def test_ray_and_local_backends_match_edit_and_a_rerun_computes_nothing(
    study, ray_address, tmp_path, report_measurement
):
    base = [study / "jobs.csv", *FAST]  # the command runs elsewhere: paths are the file's
    tic = time.perf_counter()
    local = run_pix2video(
        "batch", *base, "-o", tmp_path / "local", "--cache-dir", tmp_path / "c1", cwd=tmp_path
    )
    local_s = time.perf_counter() - tic
    assert local.returncode == 1, local.stderr
    check_study(study, tmp_path / "local")

    ray_args = [*base, "-o", tmp_path / "ray", "--cache-dir", tmp_path / "c2"]
    ray_args += ["--backend", "ray", "--ray-address", ray_address, "--cpus-per-worker", "1"]
    tic = time.perf_counter()
    proc = run_pix2video("batch", *ray_args, cwd=tmp_path)
    ray_s = time.perf_counter() - tic
    assert proc.returncode == 1, proc.stderr
    assert "Ray: 2 workers, each 1 CPU" in proc.stderr
    records = check_study(study, tmp_path / "ray")
    workers = {r["worker"] for r in records.values() if r["status"] == "ok"}
    assert 1 <= len(workers) <= 2  # long-lived workers took several jobs each
    assert all(r["unet_evaluations"] > 0 for r in records.values() if r["status"] == "ok")
    assert "failed line 5    broken: " in proc.stderr  # a line per finished job
    assert "3 ok, 0 skipped, 1 failed" in proc.stdout

    again = run_pix2video("batch", *ray_args, cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    statuses = {k: r["status"] for k, r in results(tmp_path / "ray").items()}
    assert sorted(statuses.values()) == ["failed", "skipped", "skipped", "skipped"]
    assert "0 ok, 3 skipped, 1 failed" in again.stdout
    assert "(0 UNet evaluations this run)" in again.stdout
    for name in GOOD:
        assert same_outputs(tmp_path / "ray" / name, study / "edit" / name)
    report_measurement(
        "batch of 4 jobs (tiny model), same run",
        f"local {local_s:.1f} s, ray {ray_s:.1f} s (2 workers of 1 CPU, joining a running "
        f"instance); ray - local = {(ray_s - local_s) / 4:+.1f} s per job",
    )


@pytest.mark.integration
def test_killed_batch_loses_no_finished_job_and_completes_when_rerun(study, ray_address, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [study / "jobs.csv", *FAST, "-o", out, "--cache-dir", cache]
    args += ["--backend", "ray", "--ray-address", ray_address, "--workers", "1"]
    args += ["--cpus-per-worker", "1"]  # torch threads: as `edit` ran (bitwise comparison)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pix2video", "batch", *map(str, args)],
        env=env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            lines = (out / "results.jsonl").read_text() if (out / "results.jsonl").exists() else ""
            if '"status": "ok"' in lines:
                proc.kill()
                break
            time.sleep(0.005)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    first = results(out)
    assert [r["status"] for r in first.values()].count("ok") == 1 and len(first) < 4
    (done,) = [k for k, r in first.items() if r["status"] == "ok"]
    for name in GOOD:  # an output is complete or absent, never half written
        assert not (out / name).exists() or same_outputs(out / name, study / "edit" / name)

    again = run_pix2video("batch", *args, cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    records = results(out)
    assert records[done]["status"] == "skipped" and records[done]["key"] == first[done]["key"]
    assert {k: r["status"] for k, r in records.items() if k != done} == {
        **{k: "ok" for k in GOOD if k != done},
        "broken": "failed",
    }
    for name in GOOD:
        assert same_outputs(out / name, study / "edit" / name)
    assert leftovers(out) == []


@pytest.mark.integration
def test_ctrl_c_stops_at_once_with_130_and_no_half_file(study, tmp_path):
    out = tmp_path / "out"
    args = [study / "jobs.csv", *FAST, "-o", out, "--cache-dir", tmp_path / "cache"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pix2video", "batch", *map(str, args)],
        env=env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.jsonl").exists() and (out / "results.jsonl").read_text():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("Interrupted; finished jobs are recorded in")
    assert "Traceback" not in stderr
    assert leftovers(out) == []
    for name in GOOD:
        assert not (out / name).exists() or same_outputs(out / name, study / "edit" / name)


# --------------------------------------------------------------------------- --eval


def test_eval_records_metrics_and_the_summary_compares_methods(study, tmp_path, pipelines):
    if not TINY_CLIP.exists():
        pytest.skip(f"test data {TINY_CLIP} is absent (the shared folder ../shared)")
    jobs = tmp_path / "study.yaml"
    jobs.write_text(
        f"""defaults: {{model: tiny, size: 64, max_frames: 2, steps: 2, cache_dir: cache}}
jobs:
  - {{input: {study}/clip.mp4, prompt: {PROMPT}, source_prompt: {SOURCE}, method: full}}
  - {{input: {study}/frames, prompt: a golden bird, source_prompt: a bird, method: full}}
  - {{input: {study}/clip.mp4, prompt: {PROMPT}, source_prompt: {SOURCE}, method: per-frame,
      attend: none, latent_guidance_weight: 0}}
"""
    )
    batch = read_batch(jobs, tmp_path / "out")
    first = run_batch(batch, LocalBackend(pipelines))  # no metrics yet
    assert first.counts["ok"] == 3 and first.unet_evaluations > 0
    outcome = run_batch(
        batch, LocalBackend(pipelines), evaluation=Evaluation(clip_model=str(TINY_CLIP))
    )  # done, but not measured: run again (from the cache) to be measured
    assert outcome.exit_code == 0 and outcome.counts["ok"] == 3
    assert outcome.unet_evaluations == 0
    records = outcome.records
    for record in records:
        metrics = record["metrics"]
        assert {"clip_text", "clip_image", "pixel_mse", "pixel_mse_masked"} <= metrics.keys()
        assert metrics["clip_model"] == str(TINY_CLIP) and "eval" in record["seconds"]
        assert record["output"].endswith(DEFAULT_SUFFIX)  # default names: stem + hash
    full = [r["metrics"]["clip_text"] for r in records if r["method"] == "full"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## By method" in summary and "CLIP-Text ↑" in summary
    mean, std = statistics.fmean(full), statistics.stdev(full)
    assert f"| full | 2 | {mean:.4g} ± {std:.2g} |" in summary
    assert "| per-frame | 1 | " in summary
    rerun = run_batch(batch, LocalBackend(pipelines), evaluation=Evaluation(str(TINY_CLIP)))
    assert rerun.counts["skipped"] == 3 and rerun.unet_evaluations == 0
    assert f"| full | 2 | {mean:.4g} ± {std:.2g} |" in (tmp_path / "out" / "summary.md").read_text()


# --------------------------------------------------------------------------- the JOBS file


def test_csv_jsonl_and_yaml_give_the_same_jobs_with_defaults_in_layers(tmp_path):
    sub = tmp_path / "jobs"
    sub.mkdir()
    (sub / "jobs.csv").write_text(
        "\ufeffinput,prompt,source_prompt,steps,vae_tiling,guidance_scale,size,method\n"
        'a.mp4,"a cat, in snow",,7,true,5,64,full\n'
        "\n"
        "clips/b.mp4,a dog,a pet,,,,,\n"
    )
    (sub / "jobs.jsonl").write_text(
        '{"input": "a.mp4", "prompt": "a cat, in snow", "steps": 7, "vae_tiling": true, '
        '"guidance_scale": 5.0, "size": "64", "method": "full"}\n'
        "\n"
        '{"input": "clips/b.mp4", "prompt": "a dog", "source_prompt": "a pet"}\n'
    )
    (sub / "jobs.yaml").write_text(
        "defaults:\n  steps: 3\n  size: '96'\njobs:\n"
        "  - {input: a.mp4, prompt: 'a cat, in snow', steps: 7, vae_tiling: true,\n"
        "     guidance_scale: 5.0, size: '64', method: full}\n"
        "  - input: clips/b.mp4\n    prompt: a dog\n    source_prompt: a pet\n"
    )
    cli_defaults = {"steps": 4, "size": "128", "max_frames": 2, "depth_dir": "depth"}
    batches = {
        name: read_batch(sub / name, tmp_path / "out", cli_defaults, defaults_base=tmp_path)
        for name in ("jobs.csv", "jobs.jsonl", "jobs.yaml")
    }
    for name, batch in batches.items():
        a, b = batch.jobs
        assert (a.line, b.line) == (
            (2, 4) if name == "jobs.csv" else (1, 3) if "jsonl" in name else (5, 7)
        )
        assert a.settings.input == str(sub / "a.mp4")  # relative to the JOBS file
        assert b.settings.input == str(sub / "clips" / "b.mp4")
        assert a.settings.depth_dir == str(tmp_path / "depth")  # command line: to the cwd
        assert (a.settings.steps, a.settings.vae_tiling, a.settings.guidance_scale) == (
            7,
            True,
            5.0,
        )
        assert (a.settings.size, a.settings.source_prompt, a.method) == ("64", None, "full")
        assert (b.settings.source_prompt, b.settings.max_frames, b.method) == ("a pet", 2, "")
        # row > YAML defaults > command line > edit defaults
        assert b.settings.steps == (3 if name == "jobs.yaml" else 4)
        assert b.settings.size == ("96" if name == "jobs.yaml" else "128")
        assert b.settings.guidance_scale == 7.5
        assert Path(a.settings.output).parent == tmp_path / "out"
        assert a.name.startswith("a-") and a.name.endswith(".mp4") and a.name != b.name
    csv_jobs, jsonl_jobs = batches["jobs.csv"].jobs, batches["jobs.jsonl"].jobs
    assert [j.settings for j in csv_jobs] == [j.settings for j in jsonl_jobs]


BAD_FILES = [
    ("jobs.csv", "input,prompt,colour\nclip.mp4,x,red\n", "jobs.csv, line 1: unknown column 'colour'"),
    ("jobs.jsonl", '{"input": "a.mp4", "prompt": "x"}\n{"input": "b.mp4"}\n', "jobs.jsonl, line 2: the job has no 'prompt'"),
    ("jobs.csv", "input,prompt,steps\na.mp4,x,4\nb.mp4,y,four\n", "jobs.csv, line 3: steps must be a whole number; got 'four'"),
    ("jobs.yaml", "jobs:\n  - {input: a.mp4, prompt: x}\n  - {input: b.mp4, prompt: y, steps: 0}\n", "jobs.yaml, line 3: --steps must be between 1 and 1000; got 0"),
    ("jobs.yaml", "- {input: a.mp4, prompt: x, attend: everyone}\n", "jobs.yaml, line 1: --attend must be one of"),
    ("jobs.csv", "input,prompt,output\na.mp4,x,same\nb.mp4,y,same\n", "jobs.csv, line 3: the output 'same' is also line 2's"),
    ("jobs.csv", "input,prompt,output\na.mp4,x,../escape.mp4\n", "jobs.csv, line 2: output must be a path inside OUT_DIR"),
    ("jobs.csv", "input,prompt,output\na.mp4,x,a.avi\n", "jobs.csv, line 2: unknown output type '.avi'"),
    ("jobs.csv", "input,prompt,output\na.mp4,x,results.jsonl\n", "cannot be 'results.jsonl'"),
    ("jobs.jsonl", '{"input": "a.mp4", "prompt": "x"}\n{"input": \n', "jobs.jsonl, line 2: not valid JSON"),
    ("jobs.yaml", "jobs:\n  - {input: a.mp4, prompt: x\n", "not valid YAML"),
    ("jobs.yaml", "defaults: {input: a.mp4}\njobs: [{input: a.mp4, prompt: x}]\n", "line 1 (defaults): 'input' cannot be a default"),
    ("jobs.txt", "input,prompt\n", "must be .csv, .jsonl or .yaml"),
    ("jobs.csv", "input,prompt\n", "has no jobs"),
    ("jobs.csv", "input,prompt,workers\na.mp4,x,2\n", "line 2: a job cannot set 'workers': the batch spreads"),
    ("jobs.yaml", "- {input: a.mp4, prompt: x, ray-address: auto}\n", "a job cannot set 'ray-address'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES)
def test_a_bad_jobs_file_is_one_sentence_with_its_line_and_nothing_runs(
    tmp_path, name, text, message
):
    (tmp_path / name).write_text(text)
    result = CliRunner().invoke(
        cli.main, ["batch", str(tmp_path / name), "-o", str(tmp_path / "out"), "--model", "tiny"]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and line.endswith(".") and message in line
    assert not (tmp_path / "out").exists()


def test_missing_jobs_file_and_ray_without_ray(tmp_path, monkeypatch):
    result = CliRunner().invoke(cli.main, ["batch", str(tmp_path / "no.csv"), "-o", "out"])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "jobs.csv").write_text("input,prompt\na.mp4,x\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    args = ["batch", str(tmp_path / "jobs.csv"), "-o", str(tmp_path / "out"), "--backend", "ray"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2 and result.output.strip() == f"Error: {RAY_MISSING}"
    result = CliRunner().invoke(cli.main, [*args[:4], "--workers", "2"])
    assert result.exit_code == 2 and "--workers needs --backend ray" in result.output


def test_identity_follows_content_and_settings_not_paths_or_cache(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"one")
    (tmp_path / "jobs.csv").write_text(
        f"input,prompt,cache_dir,method,steps\n{clip},x,c1,a,\n{clip},x,c2,b,\n{clip},x,c1,a,3\n"
    )
    a, b, c = read_batch(tmp_path / "jobs.csv", tmp_path / "out").jobs
    assert job_key(a) == job_key(b) != job_key(c)  # cache and label do not count, steps do
    moved = tmp_path / "moved.mp4"
    moved.write_bytes(b"one")
    assert job_key(a) == job_key(type(a)(a.line, a.settings.replace(input=str(moved)), a.name))
    before = job_key(a)
    clip.write_bytes(b"two")
    assert job_key(a) != before


def test_failures_become_sentences_and_the_batch_goes_on(tmp_path, monkeypatch):
    import pix2video.job

    (tmp_path / "jobs.csv").write_text("input,prompt,output\na.mp4,x,a\nb.mp4,x,b\nc.mp4,x,c\n")

    def fake_edit(settings, **kwargs):
        name = Path(settings.input).stem
        if name == "a":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if name == "b":
            raise RuntimeError("something broke\nin detail")
        raise InputError("The prompt is too long for the text encoder (90 tokens > 77).")

    monkeypatch.setattr(pix2video.job, "edit_clip", fake_edit)
    outcome = run_batch(read_batch(tmp_path / "jobs.csv", tmp_path / "out"))
    errors = {r["output"]: r["error"] for r in outcome.records}
    assert errors == {
        "a": "Out of GPU memory; try --dtype float16, --feature-store-dtype float16, a smaller "
        "--size or fewer frames.",
        "b": "Unexpected RuntimeError: something broke.",
        "c": "The prompt is too long for the text encoder (90 tokens > 77).",
    }
    assert outcome.exit_code == 1 and outcome.counts == {"ok": 0, "skipped": 0, "failed": 3}


def test_repeatable_options_take_several_values_and_model_paths_follow_the_jobs_file(tmp_path):
    (tmp_path / "nets" / "canny").mkdir(parents=True)
    (tmp_path / "style.safetensors").write_bytes(b"")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "input,prompt,model,controlnet,control,control_scale,lora\n"
        "clip.mp4,a cat,some/hub-model,nets/canny; other/hub-net,canny;depth,0.5; 1.25,"
        "style.safetensors:0.8\n"
    )
    (job,) = read_batch(jobs, tmp_path / "out").jobs
    s = job.settings
    assert s.controlnet == (str(tmp_path / "nets" / "canny"), "other/hub-net")
    assert s.control == ("canny", "depth") and s.control_scale == (0.5, 1.25)
    assert s.lora == (str(tmp_path / "style.safetensors") + ":0.8",)
    assert s.model == "some/hub-model"  # nothing of that name next to the JOBS file: a hub id
    jobs.write_text("input,prompt,control_scale\nclip.mp4,a cat,0.5;big\n")
    with pytest.raises(InputError, match=r"jobs.csv, line 2: control_scale must be numbers"):
        read_batch(jobs, tmp_path / "out")
