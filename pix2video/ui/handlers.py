"""What the page's events run: previews, edits, captions, upload previews, cancellation.

User-fixable errors (`Pix2VideoError`) become one sentence in a `gr.Error`; anything else
becomes one line naming the error (its traceback goes to the server's console), and the
server goes on serving. One job runs at a time (`run_job`); each page can cancel its own.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations at
# run time (a `gr.Request` annotation is how it knows to pass the request), so they must
# be real objects rather than strings.

import contextlib
import html
import os
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np

from ..errors import EditCancelled, ModelNotAvailableError, Pix2VideoError
from ..hub import DownloadMeter, can_download, offline_reason, reporting_downloads
from ..job import (
    CANCELLED,
    CANCELLED_NO_CACHE,
    AnchorPreview,
    EditResult,
    PipelineCache,
    edit_clip,
    preview_anchor,
    suggest_source_prompt,
)
from ..models import resolve_captioner
from ..settings import EditSettings
from . import ServerOptions
from .form import settings_from_form
from .progress import ProgressFeed, download_progress
from .texts import (
    OPTION,
    SOURCE_PLACEHOLDER,
    describe_preview,
    describe_result,
    label,
    unexpected_message,
)
from .uploads import UploadPreviews, safe_stem

DEFAULTS = EditSettings.defaults()
T = TypeVar("T")


class PageHandlers:
    """The page's event handlers, and the state one server shares between requests."""

    def __init__(
        self, options: ServerOptions, folder: Path, log: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.folder = Path(folder)
        self.results = self.folder / "results"
        self.log = log
        self.pipelines = PipelineCache()  # the model stays loaded between jobs
        self._job_lock = threading.Lock()  # one job at a time, whatever the queue does
        self._running: dict[str, threading.Event] = {}  # session -> its job's cancel event
        self._running_lock = threading.Lock()
        self._errors: dict[str, str] = {}  # session -> its last error, for the status box
        self.uploads = UploadPreviews(self.folder / "previews")

    # ------------------------------------------------------------------ handlers
    def preview(
        self,
        video: str | None,
        prompt: str,
        source_prompt: str = "",
        mask_prompt: str = "",
        steps: int = DEFAULTS["steps"],
        size: str = str(DEFAULTS["size"]),
        max_frames: int | None = None,
        start: str = "",
        end: str = "",
        stride: int = DEFAULTS["stride"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        attend: str = DEFAULTS["attend"],
        anchor: str = DEFAULTS["anchor"],
        latent_guidance_weight: float = DEFAULTS["latent_guidance_weight"],
        latent_guidance_steps: str = "",
        seed: int = DEFAULTS["seed"],
        frame_batch: str = str(DEFAULTS["frame_batch"]),
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio passes its tracker
    ) -> tuple[np.ndarray | None, str, np.ndarray | None]:
        """Edit only the anchor frame: a quick look at what the full edit's anchor will be."""
        form = locals()
        messages: list[str] = []
        with self.page_errors("preview", video, request):
            settings = settings_from_form(form, self.options, output=self.folder / "preview.mp4")
            progress(0, desc="Reading the clip and loading the model")

            def work(cancel: threading.Event) -> AnchorPreview:
                with reporting_downloads(download_progress(progress)):
                    return preview_anchor(
                        settings,
                        progress=ProgressFeed(progress),
                        cancel=cancel,
                        pipelines=self.pipelines,
                        warn=lambda m: messages.append(f"Warning: {m}"),
                        info=messages.append,
                        library_logs=self.options.debug,
                    )

            try:
                result = self.run_job(request, work)
            except EditCancelled as exc:
                return None, str(exc), None
        self.note(f"preview: {result.seconds:.1f} s, {result.unet_evaluations} UNet evaluations")
        status = "\n".join([describe_preview(result), *messages])
        return result.edited, status, result.source

    def edit(
        self,
        video: str | None,
        prompt: str,
        source_prompt: str = "",
        mask_prompt: str = "",
        steps: int = DEFAULTS["steps"],
        size: str = str(DEFAULTS["size"]),
        max_frames: int | None = None,
        start: str = "",
        end: str = "",
        stride: int = DEFAULTS["stride"],
        guidance_scale: float = DEFAULTS["guidance_scale"],
        attend: str = DEFAULTS["attend"],
        anchor: str = DEFAULTS["anchor"],
        latent_guidance_weight: float = DEFAULTS["latent_guidance_weight"],
        latent_guidance_steps: str = "",
        seed: int = DEFAULTS["seed"],
        frame_batch: str = str(DEFAULTS["frame_batch"]),
        side_by_side: bool = DEFAULTS["side_by_side"],
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio passes its tracker
    ) -> tuple[str | None, str]:
        """Edit the whole selection into an mp4 (with the source's audio) in the temp folder."""
        form = locals()
        messages: list[str] = []
        with self.page_errors("edit", video, request):
            output = self.results / uuid.uuid4().hex / f"{safe_stem(video)}-edited.mp4"
            settings = settings_from_form(form, self.options, output=output)
            progress(0, desc="Reading the clip and loading the model")

            def work(cancel: threading.Event) -> EditResult:
                output.parent.mkdir(parents=True, exist_ok=True)
                with reporting_downloads(download_progress(progress)):
                    return edit_clip(
                        settings,
                        progress=ProgressFeed(progress),
                        cancel=cancel,
                        pipelines=self.pipelines,
                        warn=lambda m: messages.append(f"Warning: {m}"),
                        info=messages.append,
                        library_logs=self.options.debug,
                    )

            try:
                result = self.run_job(request, work)
            except EditCancelled as exc:
                return None, str(exc)
        summary = describe_result(result)
        self.note("edit: " + summary.replace("\n", " "))
        status = "\n".join([summary, *messages])
        return result.output, status

    def suggest(
        self,
        video: str | None,
        anchor: str,
        start: str,
        end: str,
        stride: int,
        max_frames: int | None,
        request: gr.Request = None,
    ) -> Iterator[tuple[Any, Any, Any]]:
        """(caption, status line, source-prompt field update) for the anchor frame of a new clip.

        Runs beside the jobs (its own queue, not the job lock), so a preview or an edit with
        a typed source prompt never waits for it; the page puts the caption into the form
        only if the field is still empty (`FILL_CAPTION`). While the captioner downloads,
        the empty field's placeholder shows how far it got.
        """
        placeholder = gr.update(placeholder=SOURCE_PLACEHOLDER)
        if not video:
            yield "", "", placeholder
            return
        form = {
            "video": video,
            "prompt": "(not needed to caption)",
            "anchor": anchor,
            "start": start,
            "end": end,
            "stride": stride,
            # the first frame of the selection is the same whatever its length: read only it
            "max_frames": 1 if anchor == "first" else max_frames,
        }
        captioner = resolve_captioner(self.options.captioner, self.options.model)
        downloading: list[str] = []
        meter = DownloadMeter(lambda text, *_: downloading.append(f"{text}; or type it yourself"))
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                settings = settings_from_form(
                    form, self.options, output=self.folder / "caption.mp4"
                )
                with reporting_downloads(meter):
                    outcome["caption"] = suggest_source_prompt(settings, self.pipelines)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        worker = threading.Thread(target=work, daemon=True, name="pix2video-caption")
        worker.start()
        shown = None
        while worker.is_alive():
            worker.join(0.5)
            if downloading and downloading[-1] != shown:
                shown = downloading[-1]
                yield gr.update(), gr.update(), gr.update(placeholder=shown)
        yield (*self.caption_outcome(outcome, captioner, video), placeholder)

    def caption_outcome(
        self, outcome: dict[str, Any], captioner: str, video: str
    ) -> tuple[str, str]:
        """(caption, status line) from what the captioning thread left."""
        needed = "Type a source prompt: what the video shows."
        exc = outcome.get("error")
        if exc is None:
            return outcome["caption"], (
                f"Source prompt suggested by the captioner ({Path(captioner).name}); "
                "correct it if it is wrong."
            )
        if isinstance(exc, gr.Error):
            return "", f"{exc.message} {needed}"
        if isinstance(exc, ModelNotAvailableError) and not can_download():
            return "", (
                f"No caption: the captioner {captioner} is not available offline "
                f"({offline_reason()}). Type a source prompt: what the video shows; "
                f"`pix2video download {captioner}` fetches the captioner where there is internet."
            )
        if isinstance(exc, Pix2VideoError):
            return "", f"No caption: {self.clean(str(exc), video)} {needed}"
        self.log_exception("caption", exc)  # a bug must not stop the server
        return "", f"{unexpected_message(exc)} {needed}"

    def show_upload(self, video: str | None) -> tuple[Any, Any]:
        """(player, status): the upload in the player, or a preview of it where the browser
        cannot play its format (`UploadPreviews`)."""
        try:
            shown, preview = self.uploads.playable(video)
        except Pix2VideoError as exc:
            return None, f"Error: {self.clean(str(exc), video)}"
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the server
            self.log_exception("upload preview", exc)
            return None, unexpected_message(exc)
        if not preview:
            return shown, gr.update()
        return shown, (
            f"Showing a preview of {Path(video).name}: this browser cannot play its format. "
            "Edits read the uploaded file itself."
        )

    def cancel(self, request: gr.Request = None) -> str:
        """Stop this page's job before its next model step; finished work stays cached."""
        with self._running_lock:
            event = self._running.get(self.session(request))
        if event is None:
            return "Cancelled."
        event.set()
        return CANCELLED_NO_CACHE if self.options.no_cache else CANCELLED

    @staticmethod
    def session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or "no-session"

    def run_job(self, request: gr.Request | None, work: Callable[[threading.Event], T]) -> T:
        """Run `work(cancel)` alone (one job at a time), cancellable from this page."""
        key, cancel = self.session(request), threading.Event()
        with self._running_lock:
            self._running[key] = cancel
        try:
            with self._job_lock:
                return work(cancel)
        finally:
            with self._running_lock:
                if self._running.get(key) is cancel:
                    del self._running[key]

    def cancel_all(self) -> None:
        """Ask every running job to stop (the server is shutting down)."""
        with self._running_lock:
            for event in self._running.values():
                event.set()

    @contextlib.contextmanager
    def page_errors(
        self, what: str, video: str | None, request: gr.Request | None
    ) -> Iterator[None]:
        """Errors as one sentence in the page (gr.Error, then the status box), never a traceback."""
        try:
            yield
        except gr.Error as exc:
            self.remember_error(request, str(exc.message))
            raise
        except Pix2VideoError as exc:
            message = self.clean(str(exc), video)
            self.note(f"{what}: {message}")
            raise self.page_error(request, message) from None
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the server
            self.log_exception(what, exc)
            raise self.page_error(request, unexpected_message(exc)) from None

    def page_error(self, request: gr.Request | None, message: str) -> gr.Error:
        self.remember_error(request, message)
        return gr.Error(html.escape(message, quote=False), duration=None, print_exception=False)

    def remember_error(self, request: gr.Request | None, message: str) -> None:
        with self._running_lock:
            self._errors[self.session(request)] = message

    def last_error(self, request: gr.Request = None) -> str:
        """The status after a failed request: the error's sentence (also shown as a toast)."""
        with self._running_lock:
            message = self._errors.pop(self.session(request), "The request failed.")
        return f"Error: {message}"

    def clean(self, message: str, video: str | None) -> str:
        """A job's message in the page's words: fields by their labels, no server paths."""
        prefixes = [str(self.folder) + os.sep]
        if video:
            prefixes.insert(0, str(Path(video).parent) + os.sep)
        for prefix in prefixes:
            message = message.replace(prefix, "")
        return OPTION.sub(lambda m: label(m.group(1), at_start=m.start() == 0), message)

    def note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def log_exception(self, what: str, exc: BaseException) -> None:
        print(f"pix2video ui: unexpected error in {what}:", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
