"""`pix2video ui`: a local web page (Gradio) on the edit job, and its server's lifecycle.

The page (`app.py`, built from `layout.py`, `handlers.py`, `form.py`, `texts.py` and
`progress.py`) only turns its form into `EditSettings`, calls `job.preview_anchor` /
`job.edit_clip` and shows what they return; every rule about editing lives in `job/`.
This module owns what is around it and must not import Gradio at import time (the CLI
imports it for ``--help``):

- a fresh temporary folder for uploads and results, named in ``GRADIO_TEMP_DIR`` before
  Gradio is imported (Gradio reads it then), and removed when the server stops (Ctrl-C,
  SIGTERM, SIGHUP or an error);
- safe defaults: 127.0.0.1 only, no share link, an upload size limit, a cap on frames per
  edit, one job at a time (the others wait in Gradio's queue with their position shown),
  analytics off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, Pix2VideoError
from ..settings import BACKBONE_FIELDS, EditSettings

DEFAULTS = EditSettings.defaults()
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_MAX_FRAMES = 120
INSTALL_HINT = "The web UI needs Gradio; install it with: pip install 'pix2video[ui]'."
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
"""The repository's example clips (present in a source checkout, not in a wheel)."""


@dataclass
class ServerOptions:
    """What `pix2video ui` was started with: the model for every job, and the server's limits."""

    model: str = DEFAULTS["model"]
    controlnet: tuple[str, ...] = ()  # the model and what conditions it: server-level choices
    control: tuple[str, ...] = ()
    control_scale: tuple[float, ...] = ()
    canny_low: int = DEFAULTS["canny_low"]
    canny_high: int = DEFAULTS["canny_high"]
    depth_model: str | None = None
    lora: tuple[str, ...] = ()
    model_config: str | None = None
    device: str = DEFAULTS["device"]
    dtype: str = DEFAULTS["dtype"]
    captioner: str = DEFAULTS["captioner"]
    mask_model: str = DEFAULTS["mask_model"]  # segments the page's "Edit only" text
    cache_dir: str | os.PathLike = DEFAULTS["cache_dir"]
    no_cache: bool = False
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    max_frames: int = DEFAULT_MAX_FRAMES
    examples: list[Path] = field(default_factory=lambda: example_clips())
    debug: bool = False
    quiet: bool = False


def example_clips(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """The bundled example videos, when the examples folder exists."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm"))


def check_port(host: str, port: int) -> None:
    """Fail at once, before Gradio and torch load, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"Unknown --host {host!r} ({exc.strerror or exc}).") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(
                f"Cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port."
            ) from exc


@contextlib.contextmanager
def temporary_folder() -> Iterator[Path]:
    """A fresh folder for Gradio's uploads and our results, named in GRADIO_TEMP_DIR."""
    folder = Path(tempfile.mkdtemp(prefix="pix2video-ui-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the server cleanly (temporary folder removed)."""
    wanted = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in wanted:
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve(
    options: ServerOptions,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Run the web UI until `stop` is set or a signal arrives; raises `Pix2VideoError`.

    `echo` gets the lines for the console, the URL first.
    """
    from ..job import resolve_device

    check_port(options.host, options.port)
    backbone = {name: getattr(options, name) for name in BACKBONE_FIELDS}
    EditSettings("-", "-", "-", model=options.model, **backbone).validate()  # fail now
    resolve_device(options.device, options.dtype)  # a bad --device fails now, not per request
    stop = stop or threading.Event()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with temporary_folder() as folder, stop_on_signals(stop):
        try:
            import gradio  # noqa: F401 - after GRADIO_TEMP_DIR is set: Gradio reads it on import
        except ImportError as exc:
            raise Pix2VideoError(INSTALL_HINT) from exc
        from .app import EditorApp

        editor = EditorApp(options, folder, log=None if options.quiet else echo)
        local_url, share_url = editor.launch()
        try:
            echo(f"Pix2Video UI running on {local_url} (model {options.model}); Ctrl-C stops it.")
            if share_url:
                echo(f"Public share link (anyone with it can run edits): {share_url}")
            echo(f"Uploads and results are kept in {folder} until the server stops.")
            while not stop.wait(0.5):
                pass
            echo("Stopping the server.")
        finally:
            editor.close()
