"""Tests of `pix2video ui`, the Gradio page, through a real server process.

One server (`pix2video ui --model tiny --max-frames 8 --max-upload-mb 1`) is started for the
module and driven two ways: by `gradio_client` through the stable endpoints ``/preview`` and
``/edit``, and by headless Chromium through Playwright, clicking the page as a user does.
The bundled random-weight model, 2 steps, 4 frames and 256 px keep every run short; the
pictures are meaningless but every path (upload, caption, depth, inversion, editing,
writing with audio, cache reuse, cancellation, errors) is the real one. Nothing touches
the network: the hub is offline, analytics are off, and the browser may only reach the
server (any other request is recorded and fails the test).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from support import (
    COCKATOO,
    TINY_BLIP,
    browser_page,
    fill_edit_form,
    needs_chromium,
    preview_then_edit,
    wait_status,
)

from pix2video import cli
from pix2video.media import probe, read_clip

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client", reason="the test extra installs gradio")

ELEM_IDS = (
    "input-video",
    "input-player",
    "prompt",
    "source-prompt",
    "preview-button",
    "edit-button",
    "cancel-button",
    "preview-image",
    "result-video",
    "status",
)
MAX_FRAMES = 8  # the server's cap
FAST = {"steps": 2, "max_frames": 4, "size": "256"}
URL_LINE = re.compile(r"running on (http://\S+?)/? ")
FOLDER_LINE = re.compile(r"kept in (\S+) until")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        PIX2VIDEO_CACHE_DIR=str(tmp / "default-cache"),  # never the user's cache
        OMP_NUM_THREADS="1",  # the tiny model is fastest on one thread (see test_cli.py)
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Server:
    """A `pix2video ui` subprocess, its console lines, URL and temporary folder."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    url: str = ""
    folder: Path | None = None

    @classmethod
    def start(
        cls, args: list[str], tmp: Path, timeout: float = 120, env: dict[str, str] | None = None
    ) -> Server:
        process = subprocess.Popen(
            [sys.executable, "-m", "pix2video", "ui", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or server_env(tmp),
        )
        server = cls(process)
        threading.Thread(target=server._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not (server.url and server.folder):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"the server did not start:\n{server.output}")
            time.sleep(0.1)
        return server

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if m := URL_LINE.search(line):
                self.url = m.group(1)
            if m := FOLDER_LINE.search(line):
                self.folder = Path(m.group(1).rstrip("."))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_clipseg) -> Iterator[Server]:
    if not COCKATOO.exists():
        pytest.skip(f"the example clip {COCKATOO} is absent")
    tmp = tmp_path_factory.mktemp("ui-server")
    args = [
        "--model",
        "tiny",
        "--port",
        str(free_port()),
        "--cache-dir",
        str(tmp / "cache"),
        "--max-frames",
        str(MAX_FRAMES),
        "--max-upload-mb",
        "1",
        "--mask-model",
        str(tiny_clipseg),
    ]
    if TINY_BLIP.is_dir():
        args += ["--captioner", str(TINY_BLIP)]
    server = Server.start(args, tmp)
    yield server
    server.stop(signal.SIGTERM)  # graceful (kills after 30 s): its folder is removed


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    downloads = tmp_path_factory.mktemp("ui-downloads")
    return gradio_client.Client(server.url, verbose=False, download_files=str(downloads))


def video_path(value) -> str:
    """The client returns a Video output as a path (or a dict holding one)."""
    return value["video"] if isinstance(value, dict) else value


def assert_one_sentence(message: str) -> None:
    assert "Traceback" not in message and "\n" not in message, message
    assert message.endswith("."), message
    assert "pix2video-ui-" not in message, f"the server's folder leaks into: {message}"


# --------------------------------------------------------------------------- the API


@pytest.mark.integration
def test_endpoints_are_named_like_the_edit_options(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/preview", "/edit"}
    names = [p["parameter_name"] for p in api["/edit"]["parameters"]]
    assert names == [
        "video",
        "prompt",
        "source_prompt",
        "mask_prompt",
        "steps",
        "size",
        "max_frames",
        "start",
        "end",
        "stride",
        "guidance_scale",
        "attend",
        "anchor",
        "latent_guidance_weight",
        "latent_guidance_steps",
        "seed",
        "frame_batch",
        "side_by_side",
    ]
    assert [p["parameter_name"] for p in api["/preview"]["parameters"]] == names[:-1]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/edit"]["parameters"]}
    assert defaults["max_frames"] == MAX_FRAMES  # the form starts at the server's cap
    assert defaults["steps"] == 50 and defaults["attend"] == "anchor+previous"


def expected_precision() -> str:
    """The precision line `--dtype auto` gives on this machine's CPU (the server's default)."""
    from pix2video.precision import choose_dtype, cpu_flags, onednn_isa_limit

    choice = choose_dtype("auto", "cpu", cpu_flags(), onednn_isa_limit())
    return f"Precision: {choice.name} on cpu ({choice.reason})."


@pytest.mark.integration
def test_preview_then_edit_then_new_prompt_reuses_depth_and_inversion(client, report_measurement):
    handle = gradio_client.handle_file(str(COCKATOO))
    common = dict(video=handle, source_prompt="a white cockatoo", **FAST)

    tic = time.perf_counter()
    edited, status, source = client.predict(
        prompt="a golden cockatoo", **common, api_name="/preview"
    )
    preview_s = time.perf_counter() - tic
    assert Image.open(edited).size == (256, 144)  # 1280x720 at a long side of 256
    assert Image.open(source).size == (256, 144)
    assert "Anchor frame (frame 0)" in status
    assert expected_precision() in status, status  # the page says what ran, and why

    tic = time.perf_counter()
    video, status = client.predict(prompt="a golden cockatoo", **common, api_name="/edit")
    edit_s = time.perf_counter() - tic
    path = video_path(video)
    assert path.endswith(".mp4")
    info, source_info = probe(path), probe(COCKATOO)
    assert (info["width"], info["height"]) == (256, 144)
    assert info["fps"] == pytest.approx(source_info["fps"])
    assert info["has_audio"] and source_info["has_audio"]
    assert len(read_clip(path).frames) == 4
    assert status.startswith("Edited 4 frames at 256x144")
    assert expected_precision() in status, status
    # the preview inverted the anchor frame: the edit reuses it
    assert "inversion: 1 of 4 from the cache" in status, status

    video, status = client.predict(prompt="a crystal cockatoo", **common, api_name="/edit")
    assert len(read_clip(video_path(video)).frames) == 4
    assert "UNet evaluations: inversion 0, editing 16; depth and inversion from the cache" in status
    report_measurement("ui preview (tiny, 256 px, 2 steps), s", f"{preview_s:.1f}")
    report_measurement("ui edit (tiny, 4 frames, 256 px, 2 steps), s", f"{edit_s:.1f}")


@pytest.mark.integration
def test_edit_only_what_the_mask_prompt_names(client):
    handle = gradio_client.handle_file(str(COCKATOO))
    common = dict(video=handle, source_prompt="a white cockatoo", **FAST)
    edited, status, source = client.predict(
        prompt="a golden cockatoo", mask_prompt="the bird", **common, api_name="/preview"
    )
    assert Image.open(edited).size == Image.open(source).size
    video, status = client.predict(
        prompt="a golden cockatoo", mask_prompt="the bird", **common, api_name="/edit"
    )
    assert len(read_clip(video_path(video)).frames) == 4
    assert "Local edit: " in status and "every other pixel is the source's" in status, status


@pytest.mark.integration
def test_bad_requests_are_one_sentence_and_the_server_goes_on(client, tmp_path):
    not_a_video = tmp_path / "notes.txt"
    not_a_video.write_text("not a video\n")
    fast = dict(source_prompt="a bird", steps=2, max_frames=2, size="128")
    cases = {
        "not a video": dict(video=gradio_client.handle_file(str(not_a_video)), prompt="x"),
        "too many frames": dict(
            video=gradio_client.handle_file(str(COCKATOO)), prompt="x", max_frames=MAX_FRAMES + 1
        ),
        "prompt too long": dict(
            video=gradio_client.handle_file(str(COCKATOO)), prompt="a golden bird " * 60
        ),
        "no prompt": dict(video=gradio_client.handle_file(str(COCKATOO)), prompt=" "),
        "bad size": dict(video=gradio_client.handle_file(str(COCKATOO)), prompt="x", size="big"),
        "bad number": dict(
            video=gradio_client.handle_file(str(COCKATOO)), prompt="x", latent_guidance_steps="a"
        ),
    }
    messages = {}
    for name, request in cases.items():
        with pytest.raises(gradio_client.exceptions.AppError) as caught:
            client.predict(**{**fast, **request}, api_name="/edit")
        messages[name] = str(caught.value)
        assert_one_sentence(messages[name])
    assert "notes.txt" in messages["not a video"] and "video" in messages["not a video"]
    assert f"at most {MAX_FRAMES} frames" in messages["too many frames"]
    assert "prompt" in messages["prompt too long"].lower()
    # options are named as the page labels them, not as command-line flags
    assert messages["bad number"] == "Latent guidance steps must be a whole number; got 'a'."
    # the next request is served (with every option given, as numbers where they are numbers)
    edited, status, _ = client.predict(
        video=gradio_client.handle_file(str(COCKATOO)),
        prompt="a bird",
        **fast,
        start="0.1s",
        end=40,
        stride=2,
        guidance_scale=5,
        attend="anchor",
        anchor="last",
        latent_guidance_weight=50,
        latent_guidance_steps=1,
        seed=3,
        api_name="/preview",
    )
    assert Image.open(edited).size == (128, 72)
    assert "(frame 4)" in status  # frames 2 and 4 (20 fps, from 0.1 s, stride 2); anchor last


@pytest.mark.integration
def test_uploads_over_the_size_limit_are_refused(server, tmp_path):
    import httpx

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(1_200_000))  # the server takes at most 1 MB
    with big.open("rb") as f:
        response = httpx.post(f"{server.url}/gradio_api/upload", files={"files": f})
    assert response.status_code == 413, response.text


# --------------------------------------------------------------------------- the page


@pytest.mark.integration
@needs_chromium
def test_browser_preview_edit_cancel(server, tmp_path, report_measurement):
    with browser_page(server.url) as page:
        for elem_id in ELEM_IDS:  # the names scripts rely on
            assert page.locator(f"#{elem_id}").count() == 1, elem_id

        fill_edit_form(
            page, COCKATOO, "a cockatoo made of gold", "a white cockatoo on a perch",
            steps=2, max_frames=4, size=256,
        )  # fmt: skip
        preview_s, edit_s, text = preview_then_edit(page, frames=4)
        assert "with the source's audio" in text
        assert expected_precision() in text, text
        src = page.locator("#result-video video").get_attribute("src")
        response = page.request.get(src)
        assert response.ok, src
        result = tmp_path / "result.mp4"
        result.write_bytes(response.body())
        info = probe(result)
        assert info["fps"] == pytest.approx(probe(COCKATOO)["fps"])
        assert info["has_audio"]
        assert len(read_clip(result).frames) == 4

        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("PIX2VIDEO_UI_SCREENSHOT"):
            target = Path(os.environ["PIX2VIDEO_UI_SCREENSHOT"])
            target.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(target), full_page=True)

        # a long edit shows its progress and stops on Cancel; the page then works on
        page.locator("#steps input").fill("40")
        page.locator("#max-frames input").fill(str(MAX_FRAMES))
        page.locator("#edit-button").click()
        page.wait_for_function(
            "() => /Inversion|Editing/.test(document.querySelector('#result-video').innerText)",
            timeout=60_000,
        )
        page.locator("#cancel-button").click()
        assert "cancelled" in wait_status(page, "cancelled", timeout=30_000)
        page.locator("#steps input").fill("2")
        page.locator("#max-frames input").fill("2")
        page.locator("#edit-button").click()
        wait_status(page, "Edited 2 frames")
    report_measurement("ui browser preview click -> image, s", f"{preview_s:.1f}")
    report_measurement("ui browser edit click -> video, s", f"{edit_s:.1f}")


# --------------------------------------------------------------------------- what a browser shows


def test_the_player_gets_the_upload_or_a_playable_preview_of_it(corpus, tmp_path):
    from trait_corpus import TRAITS

    from pix2video.errors import VideoError
    from pix2video.media.browser import browser_playable, write_browser_preview
    from pix2video.ui.uploads import UploadPreviews

    for trait in TRAITS:
        assert browser_playable(corpus / trait.file) == trait.browser_playable, trait.name
    uploads = UploadPreviews(tmp_path / "previews")
    playable = str(corpus / "bframes.mp4")
    assert uploads.playable(playable) == (playable, False)  # shown as it is
    avi = corpus / "mpeg4.avi"
    shown, made = uploads.playable(str(avi))
    assert made and Path(shown).parent == tmp_path / "previews" and browser_playable(shown)
    assert len(read_clip(shown).frames) == len(read_clip(avi).frames)
    assert uploads.playable(None) == (None, False)
    (tmp_path / "notes.avi").write_text("not a video")
    with pytest.raises(VideoError, match="not a video FFmpeg can read"):
        uploads.playable(str(tmp_path / "notes.avi"))
    timed = write_browser_preview(corpus / "vfr.mp4", tmp_path / "vfr.mp4")  # timing kept
    assert open_reader_times(timed) == open_reader_times(corpus / "vfr.mp4") is not None


def open_reader_times(path: Path) -> list[float] | None:
    from pix2video.media import open_clip

    reader = open_clip(path, None, None, 1, None)
    reader.count()
    return [round(t, 3) for t in reader.frame_times] if reader.frame_times else None


@pytest.mark.integration
def test_browser_shows_an_avi_and_an_mjpeg_mov(server, corpus, tmp_path):
    """The input panel plays what the browser cannot: a preview, never "Video not playable"."""
    with browser_page(server.url, height=900) as page:
        for i, name in enumerate(("mpeg4.avi", "mjpeg.mov")):
            if i:  # a fresh page for the next upload
                page.goto(server.url)
                page.wait_for_selector("#status textarea")
            page.locator("#input-video input[type=file]").set_input_files(str(corpus / name))
            page.wait_for_function(
                """() => { const v = document.querySelector('#input-player video');
                    return v && v.src.includes('preview-') && v.readyState >= 2
                        && v.videoWidth > 0; }""",
                timeout=60_000,
            )
            assert "not playable" not in page.locator("body").inner_text()
            width = page.evaluate("document.querySelector('#input-player video').videoWidth")
            assert width == 160, width  # the clip's own size (smaller than the cap)
            shot = tmp_path / f"{name}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("PIX2VIDEO_UI_SCREENSHOT"):
                target = Path(os.environ["PIX2VIDEO_UI_SCREENSHOT"]).with_name(f"upload-{name}.png")
                page.screenshot(path=str(target), full_page=True)


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.integration
def test_sigterm_stops_the_server_and_removes_its_folder(server, client):
    assert server.folder is not None and server.folder.is_dir()
    assert any(server.folder.iterdir())  # uploads and results were kept there
    assert server.stop(signal.SIGTERM) == 0, server.output
    assert not server.folder.exists()
    assert "Traceback" not in server.output, server.output


@pytest.mark.integration
def test_unavailable_model_is_one_sentence_and_ctrl_c_stops(tmp_path):
    if not COCKATOO.exists():
        pytest.skip(f"the example clip {COCKATOO} is absent")
    server = Server.start(
        [
            "--model",
            "nobody/no-such-model",
            "--port",
            str(free_port()),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        tmp_path,
    )
    try:
        client = gradio_client.Client(server.url, verbose=False, download_files=str(tmp_path))
        with pytest.raises(gradio_client.exceptions.AppError) as caught:
            client.predict(
                video=gradio_client.handle_file(str(COCKATOO)),
                prompt="x",
                source_prompt="a bird",
                steps=2,
                max_frames=1,
                size="128",
                api_name="/preview",
            )
        message = str(caught.value)
        assert_one_sentence(message)
        assert "nobody/no-such-model" in message
    finally:
        code = server.stop(signal.SIGINT)
    assert code == 0, server.output
    assert not server.folder.exists()


# --------------------------------------------------------------------------- the command


@pytest.mark.integration
def test_help_imports_neither_gradio_nor_torch():
    code = (
        "import sys\n"
        "from pix2video.cli import main\n"
        "try:\n"
        "    main(['ui', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "--max-upload-mb" in out and "--share" in out
    assert out.strip().endswith("[]"), out


def test_bad_options_are_one_sentence():
    runner = CliRunner()
    result = runner.invoke(cli.main, ["ui", "--port", "70000"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli.main, ["ui", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: Cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another --port.\n"
    )


def test_without_gradio_says_how_to_install_it(monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unchanged")
    result = CliRunner().invoke(
        cli.main, ["ui", "--model", "tiny", "--port", str(free_port()), "--device", "cpu"]
    )
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: The web UI needs Gradio; install it with: pip install 'pix2video[ui]'.\n"
    )
    assert not list(tmp_path.iterdir())  # its temporary folder is gone
    assert os.environ["GRADIO_TEMP_DIR"] == "unchanged"
