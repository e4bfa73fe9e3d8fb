"""Models on first use: offline detected at once, `pix2video download` and `pix2video doctor`.

The hub is either unreachable (``HF_ENDPOINT`` at a closed local port, no ``HF_HUB_OFFLINE``)
or a stand-in served by the test (`hub_standin.StandInHub`) in the hub's HTTP shape, holding
the bundled tiny BLIP as a repository. The commands run as subprocesses with their own empty
hub cache (``HF_HOME``), since huggingface_hub reads its settings when it is imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_standin import COMMIT, StandInHub, wait_until
from support import COCKATOO, browser_page, wait_status

from pix2video.models import BUNDLED_MODELS

TINY_BLIP = BUNDLED_MODELS["tiny-blip"]
BLIP = "Salesforce/blip-image-captioning-base"
MiB = 1 << 20


def closed_port_url() -> str:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def hub_env(tmp: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp / "hf-home"),
        PIX2VIDEO_CACHE_DIR=str(tmp / "pix2video-cache"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    return env


def pix2video(args: list[str], env: dict[str, str], timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "pix2video", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def blobs(tmp: Path, repo: str) -> Path:
    return tmp / "hf-home" / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"


def snapshot(tmp: Path, repo: str) -> Path:
    return blobs(tmp, repo).parent / "snapshots" / COMMIT


@pytest.fixture
def standin():
    repo = {p.name: p.read_bytes() for p in TINY_BLIP.iterdir() if p.is_file()}
    repo["tf_model.h5"] = b"TensorFlow weights: never downloaded"
    repo["README.md"] = b"# tiny random BLIP\n"
    big = {
        "config.json": b'{"model_type": "none"}',
        "model.safetensors": hashlib.sha256(b"seed").digest() * (12 * MiB // 32),
    }
    hub = StandInHub({"tiny/blip": repo, "tiny/big": big}).start()
    yield hub
    hub.stop()


# --------------------------------------------------------------------------- download


@pytest.mark.integration
def test_download_shows_progress_checks_files_and_second_call_finds_them(standin, tmp_path):
    from pix2video.hub_cache import format_size

    env = hub_env(tmp_path, standin.url)
    size = format_size(
        sum(len(v) for k, v in standin.repos["tiny/blip"].items() if k != "tf_model.h5")
    )
    done = pix2video(["download", "tiny/blip"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"tiny/blip: downloaded {size} (7 files checked).", done.stdout
    # a bar with the model, its size and speed (rich prints its last state off a terminal)
    assert re.search(r"tiny/blip .* (\d+\.\d)/\1 kB [\d.]+ [kM]B/s", done.stderr), done.stderr
    assert not standin.file_requests("tf_model.h5")  # TensorFlow copies are not fetched
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (snapshot(tmp_path, "tiny/blip") / name).read_bytes() == (
            TINY_BLIP / name
        ).read_bytes()

    gets = len(standin.requests)
    again = pix2video(["download", "tiny/blip", "--captioner", "tiny-blip"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"tiny/blip: already in the cache ({size}, 7 files checked).",
        "tiny-blip: bundled with pix2video (captioner), nothing to download.",
    ]
    assert not [r for r in standin.requests[gets:] if r.method == "GET"]

    # what was downloaded is what the captioner loads, with the hub now offline
    code = (
        "import numpy as np\n"
        "from pix2video.pipelines.caption import caption_frame\n"
        "print(repr(caption_frame(np.full((64, 64, 3), 128, np.uint8), 'tiny/blip')))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0 and loaded.stdout.startswith("'"), loaded.stderr


@pytest.mark.integration
def test_interrupted_download_resumes_where_it_stopped(standin, tmp_path):
    env = hub_env(tmp_path, standin.url)
    standin.stall_after["model.safetensors"] = 11 * MiB  # after one 10 MiB write of the client
    process = subprocess.Popen(
        [sys.executable, "-m", "pix2video", "download", "tiny/big"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def partial_size() -> int:
            parts = list(blobs(tmp_path, "tiny/big").glob("*.part"))
            return parts[0].stat().st_size if parts else 0

        assert wait_until(lambda: partial_size() >= 10 * MiB, timeout=120), "no partial file"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("Interrupted"), err
    kept = partial_size()
    del standin.stall_after["model.safetensors"]
    standin.release.set()

    done = pix2video(["download", "tiny/big"], env)
    assert done.returncode == 0, done.stderr
    gets = standin.file_requests("model.safetensors")
    assert len(gets) == 2 and gets[0].range_start == 0
    assert gets[1].range_start == kept >= 10 * MiB  # resumed from the partial file
    assert gets[1].sent == 12 * MiB - kept
    data = standin.repos["tiny/big"]["model.safetensors"]
    assert (snapshot(tmp_path, "tiny/big") / "model.safetensors").read_bytes() == data
    assert "tiny/big: downloaded" in done.stdout and "2 files checked" in done.stdout


@pytest.mark.integration
def test_download_offline_says_what_is_cached_and_what_is_missing(standin, tmp_path):
    online = pix2video(["download", "tiny/blip"], hub_env(tmp_path, standin.url))
    assert online.returncode == 0, online.stderr
    from pix2video.hub_cache import format_size

    on_disk = format_size(sum(p.stat().st_size for p in blobs(tmp_path, "tiny/blip").iterdir()))
    offline_env = hub_env(tmp_path, closed_port_url())
    tic = time.perf_counter()
    done = pix2video(["download", "tiny/blip", "tiny/big", "--model", "tiny"], offline_env)
    seconds = time.perf_counter() - tic
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        f"tiny/blip: in the cache ({on_disk}, 7 files; not checked, the hub cannot be reached).",
        "tiny: bundled with pix2video (diffusion model), nothing to download.",
    ]
    endpoint = offline_env["HF_ENDPOINT"]
    assert done.stderr == (
        f"Error: Cannot download tiny/big: the hub ({endpoint}) cannot be reached; run "
        "`pix2video download` where there is internet and copy the hub cache (HF_HOME) here.\n"
    )
    nothing = pix2video(["download"], offline_env)
    assert nothing.returncode == 2 and nothing.stderr.startswith("Error: Name what to download")
    print(f"offline download answer: {seconds:.1f} s")


# --------------------------------------------------------------------------- loading


def test_missing_model_with_the_hub_unreachable_is_one_sentence_naming_download(monkeypatch):
    from transformers import BlipProcessor

    from pix2video.errors import ModelNotAvailableError
    from pix2video.hub import forget_probe
    from pix2video.models import load_pretrained

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    forget_probe()
    try:
        with pytest.raises(ModelNotAvailableError) as caught:
            load_pretrained(BlipProcessor.from_pretrained, "nobody/blip", "captioning model")
    finally:
        forget_probe()
    message = str(caught.value)
    assert message == (
        "The captioning model 'nobody/blip' is not available offline: it is not in the local "
        f"hub cache and the hub ({os.environ['HF_ENDPOINT']}) cannot be reached; get it with "
        "`pix2video download nobody/blip` where there is internet (then copy the hub cache), "
        "or pass a local folder."
    )


def test_auto_captioner_is_the_bundled_one_for_the_bundled_model():
    from pix2video.models import BLIP, resolve_captioner

    assert resolve_captioner("auto", "tiny") == "tiny-blip"
    assert resolve_captioner("auto", "tiny-sd2-depth") == "tiny-blip"
    assert resolve_captioner("auto", "stabilityai/stable-diffusion-2-depth") == BLIP
    assert resolve_captioner("some/captioner", "tiny") == "some/captioner"


def test_wanted_files_take_one_copy_of_the_weights():
    from pix2video.hub import wanted_files

    sd2 = [
        "model_index.json", "512-depth-ema.ckpt", "512-depth-ema.safetensors",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.bin", "vae/config.json", "tokenizer/vocab.json",
        "text_encoder/flax_model.msgpack", "onnx/unet/model.onnx",
    ]  # fmt: skip
    assert wanted_files(sd2) == [
        "model_index.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
    ]
    assert wanted_files(
        ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"]
    ) == [
        "config.json",
        "model.safetensors",
    ]


def test_wanted_files_of_sd35_flux_and_sd35_controlnets_skip_their_single_file_copies():
    """SD3.5 repositories also hold ComfyUI's `text_encoders/` (15 GB) and a single-file
    checkpoint, FLUX.1 Depth its 23 GB single file and `ae.safetensors`, SD3.5's ControlNets
    a single-file copy beside diffusers' file: none of them is read by diffusers."""
    from pix2video.hub import wanted_files

    sd35 = [
        "model_index.json", "sd3.5_large.safetensors", "text_encoders/clip_g.safetensors",
        "text_encoders/t5xxl_fp16.safetensors", "text_encoders/README.md",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "text_encoder_3/config.json", "text_encoder_3/model-00001-of-00002.safetensors",
        "text_encoder_3/model-00002-of-00002.safetensors", "tokenizer_3/spiece.model",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    assert wanted_files(sd35) == sorted(
        p
        for p in sd35
        if not p.startswith(("sd3.5_large", "text_encoders/clip", "text_encoders/t5"))
    )
    flux = ["model_index.json", "flux1-depth-dev.safetensors", "ae.safetensors",
            "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"]  # fmt: skip
    assert wanted_files(flux) == [
        "model_index.json", "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]  # fmt: skip
    controlnet = ["config.json", "diffusion_pytorch_model.safetensors",
                  "sd3.5_large_controlnet_depth.safetensors", "README.md"]  # fmt: skip
    assert wanted_files(controlnet) == [
        "README.md",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    lora = ["README.md", "pytorch_lora_weights.safetensors"]  # no library file: kept as it is
    assert wanted_files(lora) == lora


def test_sd3_and_flux_read_depth_anything_v2_by_default_and_download_knows_it(tmp_path):
    from pix2video.models import (
        DEFAULT_DEPTH_MODEL,
        DEFAULT_DIT_DEPTH_MODEL,
        default_depth_model,
        models_for,
    )

    folder = tmp_path / "my-flux" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"_class_name": "FluxTransformer2DModel"}')
    assert DEFAULT_DIT_DEPTH_MODEL == "depth-anything/Depth-Anything-V2-Small-hf"
    for model in (str(folder.parent), "black-forest-labs/FLUX.1-Depth-dev",
                  "stabilityai/stable-diffusion-3.5-large"):  # fmt: skip
        assert default_depth_model(model) == DEFAULT_DIT_DEPTH_MODEL, model
    for model in ("tiny", "stabilityai/stable-diffusion-2-depth", "runwayml/v1-5", None):
        assert default_depth_model(model) == DEFAULT_DEPTH_MODEL, model
    flux = "black-forest-labs/FLUX.1-Canny-dev"
    assert models_for(flux, controls=("canny",)) == [("diffusion model", flux)]
    assert models_for(flux, controls=("depth",)) == [
        ("diffusion model", flux), ("depth model", DEFAULT_DIT_DEPTH_MODEL),
    ]  # fmt: skip
    assert ("depth model", "my/depth") in models_for(
        flux, controls=("depth",), depth_model="my/depth"
    )
    assert ("depth model", DEFAULT_DEPTH_MODEL) in models_for(defaults=True)  # SD2's as before
    assert ("depth model", DEFAULT_DIT_DEPTH_MODEL) in models_for(flux, defaults=True)


@pytest.mark.integration
def test_sd35_and_flux_offline_with_an_empty_cache_are_one_sentence_in_seconds(tmp_path):
    """`download` of SD3.5 Large, its depth ControlNet and FLUX.1 Depth with their depth model
    names each missing one, says they are gated, in seconds; `doctor` lists every model it
    knows with the command that gets it."""
    env = hub_env(tmp_path, closed_port_url())
    sd35 = "stabilityai/stable-diffusion-3.5-large"
    flux = "black-forest-labs/FLUX.1-Depth-dev"
    depth = "depth-anything/Depth-Anything-V2-Small-hf"
    args = ["download", "--model", sd35, "--controlnet", f"{sd35}-controlnet-depth", flux]
    tic = time.perf_counter()
    done = pix2video([*args, "--control", "depth"], env)
    seconds = time.perf_counter() - tic
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr == (
        f"Error: Cannot download {flux}, {sd35}, {sd35}-controlnet-depth, {depth}: the hub "
        f"({env['HF_ENDPOINT']}) cannot be reached; run `pix2video download` where there is "
        "internet and copy the hub cache (HF_HOME) here; "
        f"{flux}, {sd35}, {sd35}-controlnet-depth are gated: accept each licence on the hub "
        "page and log in (`hf auth login`) first.\n"
    )
    assert seconds < 60, seconds  # the hub is asked once, 3 s at most; the rest is Python
    doctor = pix2video(["doctor"], env)
    assert doctor.returncode == 0, doctor.stderr
    for name in (sd35, f"{sd35}-controlnet-depth", flux, "black-forest-labs/FLUX.1-Canny-dev",
                 "stabilityai/stable-diffusion-3.5-medium", depth):  # fmt: skip
        line = next(line for line in doctor.stdout.splitlines() if line.split()[:1] == [name])
        assert "not cached (" in line and f"get it with `pix2video download {name}`" in line
    print(f"offline download answer: {seconds:.1f} s")


def test_download_meter_says_megabytes_and_speed_at_most_every_interval():
    from pix2video.hub import DownloadMeter

    now, shown = [0.0], []
    meter = DownloadMeter(lambda text, *_: shown.append(text), interval=0.5, clock=lambda: now[0])
    for t, done in ((0.0, 0), (1.0, 10 * 10**6), (1.2, 11 * 10**6), (2.0, 100 * 10**6)):
        now[0] = t
        meter("owner/model", done, 100 * 10**6)
    assert shown == [
        "Downloading owner/model: 0 of 100 MB",
        "Downloading owner/model: 10 of 100 MB at 10.0 MB/s",
        "Downloading owner/model: 100 of 100 MB",  # the end is always shown
    ]


# --------------------------------------------------------------------------- doctor


@pytest.mark.integration
def test_doctor_works_offline_and_prints_every_section(tmp_path):
    env = hub_env(tmp_path, closed_port_url())
    done = pix2video(["doctor"], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for section in ("Versions:", "Devices:", "Video codecs:", "Models:", "Disk:"):
        assert f"\n{section}\n" in f"\n{out}", out
    for line in ("python", "torch", "diffusers", "transformers", "PyAV", "gradio", "ray"):
        assert f"\n  {line} " in out, line
    assert "cpu dtypes" in out and "float32" in out
    assert "libx264 yes" in out  # what `edit` writes
    assert f"{env['HF_ENDPOINT']}: cannot be reached" in out
    assert "bundled tiny-blip" in out and "bundled tiny-sd2-depth" in out
    assert "error" not in out.lower(), out


# --------------------------------------------------------------------------- the web page


def unreachable_server(tmp: Path, *args: str):
    """`pix2video ui --model tiny` with the hub unreachable and an empty hub cache."""
    from test_ui import Server, free_port, server_env

    if not COCKATOO.exists():
        pytest.skip(f"the example clip {COCKATOO} is absent")
    env = {k: v for k, v in server_env(tmp).items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=closed_port_url(), HF_HOME=str(tmp / "hf-home"))
    port = str(free_port())
    base = ["--model", "tiny", "--port", port, "--cache-dir", str(tmp / "cache")]
    server = Server.start([*base, *args], tmp, env=env)
    server.hub = env["HF_ENDPOINT"]
    return server


def preview_and_edit(page, frames: int = 2) -> None:
    page.locator("#prompt textarea").fill("a cockatoo made of gold")
    page.get_by_text("Advanced").click()
    page.locator("#steps input").fill("2")
    page.locator("#max-frames input").fill(str(frames))
    page.locator("#size textarea").fill("128")
    page.locator("#preview-button").click()
    page.wait_for_selector("#preview-image img", timeout=120_000)
    wait_status(page, "^Anchor frame")
    page.locator("#edit-button").click()
    page.wait_for_selector("#result-video video[src]", timeout=120_000)
    wait_status(page, f"^Edited {frames} frames")


@pytest.mark.integration
def test_page_with_the_hub_unreachable_says_so_at_once_and_keeps_a_typed_prompt(
    tmp_path, report_measurement
):
    server = unreachable_server(tmp_path, "--captioner", BLIP)
    try:
        with browser_page(server.url) as page:
            typed = "a white cockatoo on a perch"
            tic = time.perf_counter()
            page.locator("#input-video input[type=file]").set_input_files(str(COCKATOO))
            page.locator("#source-prompt textarea").fill(typed)  # while the caption runs
            # the captioner is not in the cache and the hub is unreachable: said in seconds,
            # not after the minutes of a hub client retrying. Upload to status through the
            # browser took 7.9 s alone on our 2-core machine and 10 s beside another test
            # worker (`-n 2`); the figure is reported
            status = wait_status(page, "^No caption", timeout=30_000)
            seconds = time.perf_counter() - tic
            assert status == (
                f"No caption: the captioner {BLIP} is not available offline (the hub "
                f"({server.hub}) cannot be reached). Type a source prompt: what the video "
                f"shows; `pix2video download {BLIP}` fetches the captioner where there is "
                "internet."
            )
            if target := os.environ.get("PIX2VIDEO_FIRST_USE_SCREENSHOT"):
                page.screenshot(path=target, full_page=True)
            assert page.locator("#source-prompt textarea").input_value() == typed
            preview_and_edit(page)
            assert page.locator("#source-prompt textarea").input_value() == typed
        # still serving, to scripts too: the same preview through the API
        import gradio_client

        client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp_path))
        _, status, _ = client.predict(
            video=gradio_client.handle_file(str(COCKATOO)),
            prompt="a golden cockatoo",
            source_prompt=typed,
            steps=2,
            max_frames=2,
            size="128",
            api_name="/preview",
        )
        assert status.startswith("Anchor frame (frame 0)"), status
        assert server.process.poll() is None
        assert "Traceback" not in server.output, server.output
    finally:
        server.stop()
    report_measurement("choosing a clip -> status, hub unreachable, s", f"{seconds:.1f}")


@pytest.mark.integration
def test_tiny_model_page_captions_with_the_bundled_captioner(tmp_path):
    server = unreachable_server(tmp_path)  # --captioner auto: tiny-blip with --model tiny
    try:
        with browser_page(server.url) as page:
            page.locator("#input-video input[type=file]").set_input_files(str(COCKATOO))
            status = wait_status(page, "suggested by the captioner|No caption")
            assert status.startswith("Source prompt suggested by the captioner (tiny-blip)"), status
            caption = page.locator("#source-prompt textarea").input_value()
            assert caption.strip()
            preview_and_edit(page)
            assert page.locator("#source-prompt textarea").input_value() == caption
        assert "Traceback" not in server.output, server.output
    finally:
        server.stop()


@pytest.mark.integration
def test_edit_downloads_a_missing_model_with_a_bar_then_loads_it_from_the_cache(tmp_path):
    """`pix2video edit --model owner/name` on a hub id not in the cache: fetched with progress
    (only the files a loader reads), then loaded from the cache, and the edit runs."""
    if not COCKATOO.exists():
        pytest.skip(f"the example clip {COCKATOO} is absent")
    folder = BUNDLED_MODELS["tiny"]
    repo = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    repo["unet/diffusion_pytorch_model.fp16.safetensors"] = b"a variant: never downloaded"
    repo["512-depth-ema.ckpt"] = b"a single-file copy: never downloaded"
    hub = StandInHub({"tiny/sd2-depth": repo}).start()
    try:
        args = [
            "edit", str(COCKATOO), "-p", "a golden cockatoo", "--source-prompt", "a cockatoo",
            "--model", "tiny/sd2-depth", "--size", "64", "--max-frames", "2", "--steps", "2",
            "-o", str(tmp_path / "out.mp4"), "--no-cache",
        ]  # fmt: skip
        done = pix2video(args, hub_env(tmp_path, hub.url))
    finally:
        hub.stop()
    assert done.returncode == 0, done.stderr
    assert "Edited 2 frames" in done.stdout, done.stdout
    assert re.search(r"tiny/sd2-depth .* ([\d.]+)/\1 MB", done.stderr), done.stderr
    fetched = {r.path.split("/", 2)[2] for r in hub.requests if r.method == "GET"}
    assert fetched == set(repo) - {
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "512-depth-ema.ckpt",
    }
