"""The page of `pix2video ui`: a form -> `EditSettings` -> the job -> what it returned.

Stable names, so that scripts and tests can drive it:

- endpoints ``/preview`` (returns the edited anchor frame, the status text and the source
  anchor frame) and ``/edit`` (returns the result video and the status text); their
  parameters are named like the edit options, because Gradio names API parameters after
  the handler's parameters (`FORM_FIELDS`); an empty ``source_prompt`` means "caption it";
- elem_ids: ``#input-video`` (the upload), ``#input-player`` (what the browser can play of
  it: the upload, or a preview of it), ``#prompt``, ``#source-prompt``, ``#mask-prompt`` (a local
  edit: only what it names changes; empty = the whole frame), ``#preview-button``,
  ``#edit-button``, ``#cancel-button``, ``#preview-image`` (the edited anchor frame),
  ``#result-video``, ``#status``; in the Advanced section, each option's name with dashes
  (``#steps``, ``#max-frames``, ``#size``, ...).

Every choice list, default and bound comes from `settings.py`; every rule about editing
stays in `job.py`. User-fixable errors (`Pix2VideoError`) become one sentence in a
`gr.Error`; anything else becomes one line naming the error (its traceback goes to the
server's console), and the server goes on serving.
"""

# No `from __future__ import annotations` here: Gradio reads the handlers' annotations at
# run time (a `gr.Request` annotation is how it knows to pass the request), so they must
# be real objects rather than strings.

import contextlib
import html
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np

from ..core.options import ANCHORS, ATTEND_MODES
from ..errors import EditCancelled, ModelNotAvailableError, Pix2VideoError
from ..hub import DownloadMeter, can_download, offline_reason, reporting_downloads
from ..job import (
    CANCELLED,
    CANCELLED_NO_CACHE,
    STAGES,
    AnchorPreview,
    EditResult,
    PipelineCache,
    edit_clip,
    preview_anchor,
    suggest_source_prompt,
)
from ..models import resolve_captioner
from ..settings import BACKBONE_FIELDS, EditSettings
from . import ServerOptions
from .uploads import UploadPreviews, safe_stem

DEFAULTS = EditSettings.defaults()
T = TypeVar("T")

FORM_FIELDS = (
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
)
"""The inputs of ``/edit`` in order (``/preview`` takes all but ``side_by_side``)."""

JOB_QUEUE = "pix2video-job"  # one concurrency group: previews and edits take turns
CAPTION_QUEUE = "pix2video-caption"  # captions run beside the jobs, never in front of one
PREVIEW_QUEUE = "pix2video-upload-preview"  # playable previews of uploads, likewise
DELETE_AFTER_S = 6 * 3600  # uploads and results older than this are swept (hourly)
NO_VIDEO = "Choose a video first: upload one, or pick the example clip."
SOURCE_PLACEHOLDER = (
    "what the input shows (filled in from a caption of the anchor frame when you choose a video)"
)
FILL_CAPTION = """(caption, note, typed, status) =>
    (typed && typed.trim()) ? [typed, caption ? status : note || status] : [caption, note || status]"""
"""Runs in the page once a caption is back: it fills the source prompt only if the field is
still empty, so text typed meanwhile is never overwritten; why there is no caption is said
in the status either way."""
CSS = "#status textarea { font-family: var(--font-mono); font-size: 0.85em; }"


class ProgressFeed:
    """The job's ``progress(stage, done, total)`` as `gr.Progress` updates with an ETA.

    The ETA is per stage (stages count different units). Work already done at a stage's
    first report (cached, resumed) does not count towards the rate, as in the CLI.
    """

    def __init__(self, progress: Callable[..., Any], clock: Callable[[], float] = time.monotonic):
        self.progress = progress
        self.clock = clock
        self.stage: str | None = None
        self.started = 0.0
        self.first_done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self.started, self.first_done = stage, now, done
        desc = stage.capitalize()
        worked = done - self.first_done
        if worked > 0 and done < total:
            eta = (now - self.started) / worked * (total - done)
            desc += f", about {format_seconds(eta)} left"
        self.progress((done, total), desc=desc, unit=STAGES.get(stage, "steps"))


def download_progress(progress: Callable[..., Any]) -> DownloadMeter:
    """A model download as `gr.Progress` updates: MB done of the total, and the speed."""
    return DownloadMeter(
        lambda text, done, total: progress((done // 10**6, total // 10**6), desc=text, unit="MB")
    )


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def describe_result(result: EditResult) -> str:
    """The status after an edit: what was made, what it cost, what came from the cache."""
    n, (w, h) = result.frames, result.size
    total = result.seconds.get("total", 0.0)
    audio = ", with the source's audio" if result.has_audio else ""
    lines = [
        f"Edited {n} frame{'s' if n != 1 else ''} at {w}x{h} in {total:.1f} s "
        f"({result.steps} steps; {result.describe_rate()}{audio}).",
        f"UNet evaluations: inversion {result.unet_evaluations_inversion}, editing "
        f"{result.unet_evaluations_editing}; {describe_cache(result)}.",
    ]
    if result.masked:
        lines.append(result.describe_mask())
    if result.frames_reused:
        lines.append(result.describe_reuse())
    return "\n".join(lines)


def describe_cache(result: EditResult) -> str:
    if not result.cache_enabled:
        return "the cache is off"
    if result.editing == "cached":
        return "the whole result came from the cache"
    n = result.frames
    if result.depth_cached == n and result.inversion_cached == n:
        reuse = "depth and inversion from the cache"
    elif result.depth_cached == 0 and result.inversion_cached == 0:
        reuse = "depth and inversion computed"
    else:
        reuse = (
            f"depth: {result.depth_cached} of {n} frames from the cache; inversion: "
            f"{result.inversion_cached} of {n} from the cache"
        )
    if result.editing == "resumed":
        reuse += f"; editing resumed after step {result.resumed_from_step + 1}"
    return reuse


def describe_preview(preview: AnchorPreview) -> str:
    return (
        f"Anchor frame (frame {preview.frame_index}) edited in {preview.seconds:.1f} s "
        f"({preview.unet_evaluations} UNet evaluations); the full edit with these settings "
        "gives this frame exactly and reuses its inversion."
    )


def unexpected_message(exc: BaseException) -> str:
    """One line for an error that is not the user's to fix (its traceback is in the log)."""
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return "Out of GPU memory; try a smaller size or fewer frames."
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"Unexpected {name}: {first} (the server's console has the details)."


OPTION = re.compile(r"--([a-z]+(?:-[a-z]+)*)")


def label(option: str, at_start: bool = False) -> str:
    """``max-frames`` as the page calls it: "Max frames" (mid-sentence: "max frames")."""
    words = option.replace("-", " ")
    return words.capitalize() if at_start else words


def whole(value: Any) -> Any:
    """4 from 4.0 or "4" (number and text fields); other values go to validation as they are."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    return value


def text_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else value


class EditorApp:
    """The Blocks page, its handlers, and the state one server shares between requests."""

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
        self.blocks = self.build()

    # ------------------------------------------------------------------ page
    def build(self) -> gr.Blocks:
        o = self.options
        with gr.Blocks(
            title="Pix2Video", analytics_enabled=False, delete_cache=(3600, DELETE_AFTER_S)
        ) as blocks:
            gr.Markdown(
                "## Pix2Video: edit a video with a text prompt\n"
                "Each frame is inverted with the *source prompt* (what the video shows) and "
                "regenerated with the *edit prompt* (what it should show), attending to the "
                f"anchor frame and the previous one. Model: `{o.model}`; at most "
                f"{o.max_frames} frames per edit on this server."
            )
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    video = gr.File(  # the upload; jobs read it as it is
                        label="Input video",
                        type="filepath",
                        elem_id="input-video",
                        height=90,
                    )
                    shown = gr.Video(  # what the browser can play of it (`UploadPreviews`)
                        label="Playback of the input",
                        interactive=False,
                        elem_id="input-player",
                        include_audio=True,
                        height=300,
                    )
                    if o.examples:
                        gr.Examples(
                            examples=[[str(p)] for p in o.examples],
                            inputs=[video],
                            label="Example clip",
                            api_visibility="private",
                        )
                    prompt = gr.Textbox(
                        value="",
                        label="Edit prompt",
                        placeholder="what the result should show, e.g. a crystal cockatoo",
                        elem_id="prompt",
                    )
                    source_prompt = gr.Textbox(
                        value="",
                        label="Source prompt",
                        placeholder=SOURCE_PLACEHOLDER,
                        elem_id="source-prompt",
                    )
                    mask_prompt = gr.Textbox(
                        value="",
                        label="Edit only (optional)",
                        placeholder="e.g. the bird: only what this names changes, every other "
                        "pixel stays as it was; empty: the whole frame",
                        elem_id="mask-prompt",
                    )
                    side_by_side = gr.Checkbox(
                        value=DEFAULTS["side_by_side"],
                        label="Side by side (source | edit) in the result",
                    )
                    with gr.Row():
                        preview_button = gr.Button("Preview anchor frame", elem_id="preview-button")
                        edit_button = gr.Button(
                            "Edit video", variant="primary", elem_id="edit-button"
                        )
                        cancel_button = gr.Button(
                            "Cancel", variant="stop", elem_id="cancel-button", scale=0, min_width=90
                        )
                    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                        fields = self.advanced_fields()
                with gr.Column(scale=1):
                    with gr.Row():
                        source_image = gr.Image(
                            label="Anchor frame: source",
                            interactive=False,
                            format="png",
                            elem_id="preview-source",
                        )
                        preview_image = gr.Image(
                            label="Anchor frame: edited",
                            interactive=False,
                            format="png",
                            elem_id="preview-image",
                        )
                    result_video = gr.Video(
                        label="Result", interactive=False, elem_id="result-video", height=360
                    )
                    status = gr.Textbox(
                        label="Status", interactive=False, lines=4, elem_id="status"
                    )
                    # the caption and its status line wait here until the page decides
                    # whether they may go into the form (`FILL_CAPTION`)
                    caption = gr.Textbox(visible="hidden", elem_id="caption")
                    caption_note = gr.Textbox(visible="hidden", elem_id="caption-note")

            form = [video, prompt, source_prompt, mask_prompt, *fields.values()]
            job_events = dict(concurrency_limit=1, concurrency_id=JOB_QUEUE)
            preview_event = preview_button.click(
                self.preview,
                inputs=form,
                outputs=[preview_image, status, source_image],
                api_name="preview",
                show_progress_on=[preview_image],
                **job_events,
            )
            edit_event = edit_button.click(
                self.edit,
                inputs=[*form, side_by_side],
                outputs=[result_video, status],
                api_name="edit",
                show_progress_on=[result_video],
                **job_events,
            )
            for event in (preview_event, edit_event):
                event.failure(
                    self.last_error,
                    outputs=[status],
                    concurrency_limit=None,
                    api_visibility="private",
                    show_progress="hidden",
                )
            cancel_button.click(
                self.cancel,
                outputs=[status],
                cancels=[preview_event, edit_event],  # also drops this page's queued jobs
                concurrency_limit=None,  # never waits behind the job it cancels
                api_visibility="private",
            )
            video.change(
                self.show_upload,
                inputs=[video],
                outputs=[shown, status],
                show_progress="minimal",
                api_visibility="private",
                concurrency_limit=1,  # previews queue: beside the jobs, never many at once
                concurrency_id=PREVIEW_QUEUE,
            )
            video.change(
                self.suggest,
                inputs=[
                    video,
                    *(fields[n] for n in ("anchor", "start", "end", "stride", "max_frames")),
                ],
                outputs=[caption, caption_note, source_prompt],
                show_progress="minimal",
                show_progress_on=[source_prompt],
                api_visibility="private",
                concurrency_limit=1,
                concurrency_id=CAPTION_QUEUE,
            ).then(
                None,
                inputs=[caption, caption_note, source_prompt, status],
                outputs=[source_prompt, status],
                js=FILL_CAPTION,
                api_visibility="private",
                queue=False,
            )
        return blocks

    def advanced_fields(self) -> dict[str, gr.components.Component]:
        """The Advanced section's fields by option name, in the handlers' order."""
        cap = self.options.max_frames
        with gr.Row():
            steps = gr.Number(
                value=DEFAULTS["steps"],
                label="Steps",
                info="DDIM steps (inversion and editing)",
                precision=0,
                elem_id="steps",
            )
            size = gr.Textbox(
                value=str(DEFAULTS["size"]),
                label="Size",
                info="long side (aspect kept) or WxH",
                elem_id="size",
            )
            max_frames = gr.Number(
                value=cap,
                label="Max frames",
                info=f"at most {cap} on this server",
                precision=0,
                elem_id="max-frames",
            )
        with gr.Row():
            start = gr.Textbox(
                value="",
                label="Start",
                info="frame (12), seconds (2.5s) or 1:02.5",
                elem_id="start",
            )
            end = gr.Textbox(
                value="", label="End", info="exclusive; empty: end of the clip", elem_id="end"
            )
            stride = gr.Number(
                value=DEFAULTS["stride"],
                label="Stride",
                info="every N-th frame",
                precision=0,
                elem_id="stride",
            )
        with gr.Row():
            guidance_scale = gr.Number(
                value=DEFAULTS["guidance_scale"],
                label="Guidance scale",
                elem_id="guidance-scale",
            )
            attend = gr.Dropdown(
                choices=list(ATTEND_MODES),
                value=DEFAULTS["attend"],
                label="Attend",
                info="frames the self-attention reads",
                elem_id="attend",
            )
            anchor = gr.Radio(
                choices=list(ANCHORS), value=DEFAULTS["anchor"], label="Anchor", elem_id="anchor"
            )
        with gr.Row():
            latent_guidance_weight = gr.Number(
                value=DEFAULTS["latent_guidance_weight"],
                label="Latent guidance weight",
                info="0 turns the update off",
                elem_id="latent-guidance-weight",
            )
            latent_guidance_steps = gr.Textbox(  # a number field would show 0 for "unset"
                value="",
                label="Latent guidance steps",
                placeholder="auto",
                info="empty: steps // 2 + 1",
                elem_id="latent-guidance-steps",
            )
            seed = gr.Number(value=DEFAULTS["seed"], label="Seed", precision=0, elem_id="seed")
        with gr.Row():
            frame_batch = gr.Textbox(
                value=str(DEFAULTS["frame_batch"]),
                label="Frames per UNet call",
                info="editing, step by step; auto: as many as the GPU holds (1 on a CPU)",
                elem_id="frame-batch",
            )
        fields = {
            "steps": steps,
            "size": size,
            "max_frames": max_frames,
            "start": start,
            "end": end,
            "stride": stride,
            "guidance_scale": guidance_scale,
            "attend": attend,
            "anchor": anchor,
            "latent_guidance_weight": latent_guidance_weight,
            "latent_guidance_steps": latent_guidance_steps,
            "seed": seed,
            "frame_batch": frame_batch,
        }
        assert tuple(fields) == FORM_FIELDS[4:-1]  # noqa: S101 - the API's parameter order
        return fields

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
            settings = self.settings_from_form(form, output=self.folder / "preview.mp4")
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
            settings = self.settings_from_form(form, output=output)
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
                settings = self.settings_from_form(form, output=self.folder / "caption.mp4")
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

    # ------------------------------------------------------------------ helpers
    def settings_from_form(self, form: dict[str, Any], output: Path) -> EditSettings:
        """`EditSettings` from the form's values and the server's options (checked by the job)."""
        o = self.options
        if not form.get("video"):
            raise gr.Error(NO_VIDEO, duration=None, print_exception=False)
        max_frames = whole(form.get("max_frames"))
        if max_frames is None:
            max_frames = o.max_frames
        elif isinstance(max_frames, int) and max_frames > o.max_frames:
            raise gr.Error(
                f"This server edits at most {o.max_frames} frames at a time; lower Max frames "
                f"from {max_frames}, or choose a shorter range or a larger stride.",
                duration=None,
                print_exception=False,
            )
        values = {
            name: form[name]
            for name in FORM_FIELDS[1:]
            if name in form and name not in ("max_frames",)
        }
        for name in ("start", "end", "source_prompt", "mask_prompt", "latent_guidance_steps"):
            if name in values:
                values[name] = text_or_none(values[name])
        for name in ("steps", "stride", "seed", "latent_guidance_steps"):
            if name in values:
                values[name] = whole(values[name])
        if "size" in values:
            values["size"] = text_or_none(values["size"]) or DEFAULTS["size"]
        if "frame_batch" in values:
            values["frame_batch"] = whole(text_or_none(values["frame_batch"]) or "auto")
        return EditSettings(
            input=form["video"],
            output=output,
            max_frames=max_frames,
            model=o.model,
            **{name: getattr(o, name) for name in BACKBONE_FIELDS},
            device=o.device,
            dtype=o.dtype,
            captioner=o.captioner,
            mask_model=o.mask_model,
            cache_dir=o.cache_dir,
            no_cache=o.no_cache,
            **values,
        )

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

    # ------------------------------------------------------------------ server
    def launch(self) -> tuple[str, str | None]:
        """Start serving (without blocking); returns (local URL, share URL or None)."""
        o = self.options
        self.blocks.queue(default_concurrency_limit=1)
        try:
            _, local_url, share_url = self.blocks.launch(
                server_name=o.host,
                server_port=o.port,
                share=o.share,
                max_file_size=f"{o.max_upload_mb}mb",
                allowed_paths=[str(p) for p in o.examples],
                prevent_thread_lock=True,
                quiet=True,
                show_error=False,
                ssr_mode=False,
                mcp_server=False,
                enable_monitoring=False,
                run_history=False,
                footer_links=["api"],
                css=CSS,
            )
        except OSError as exc:
            raise Pix2VideoError(
                f"Cannot start the server on {o.host}:{o.port} ({exc}); choose another --port."
            ) from exc
        return local_url, share_url

    def close(self) -> None:
        self.cancel_all()
        self.blocks.close(verbose=False)
