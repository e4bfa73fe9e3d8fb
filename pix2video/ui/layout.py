"""The layout of `pix2video ui`'s page (Gradio Blocks) and which handler each event runs.

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

The handlers are `handlers.PageHandlers`; the page's words are in `texts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..core.options import ANCHORS, ATTEND_MODES
from ..settings import EditSettings
from .form import FORM_FIELDS
from .texts import SOURCE_PLACEHOLDER

if TYPE_CHECKING:
    from .handlers import PageHandlers

DEFAULTS = EditSettings.defaults()
JOB_QUEUE = "pix2video-job"  # one concurrency group: previews and edits take turns
CAPTION_QUEUE = "pix2video-caption"  # captions run beside the jobs, never in front of one
PREVIEW_QUEUE = "pix2video-upload-preview"  # playable previews of uploads, likewise
DELETE_AFTER_S = 6 * 3600  # uploads and results older than this are swept (hourly)
FILL_CAPTION = """(caption, note, typed, status) =>
    (typed && typed.trim()) ? [typed, caption ? status : note || status] : [caption, note || status]"""
"""Runs in the page once a caption is back: it fills the source prompt only if the field is
still empty, so text typed meanwhile is never overwritten; why there is no caption is said
in the status either way."""


def build_page(handlers: PageHandlers) -> gr.Blocks:
    """The Blocks page: the form, the outputs, and which handler each event runs."""
    o = handlers.options
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
                    edit_button = gr.Button("Edit video", variant="primary", elem_id="edit-button")
                    cancel_button = gr.Button(
                        "Cancel", variant="stop", elem_id="cancel-button", scale=0, min_width=90
                    )
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    fields = advanced_fields(o.max_frames)
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
                status = gr.Textbox(label="Status", interactive=False, lines=4, elem_id="status")
                # the caption and its status line wait here until the page decides
                # whether they may go into the form (`FILL_CAPTION`)
                caption = gr.Textbox(visible="hidden", elem_id="caption")
                caption_note = gr.Textbox(visible="hidden", elem_id="caption-note")

        form = [video, prompt, source_prompt, mask_prompt, *fields.values()]
        job_events = dict(concurrency_limit=1, concurrency_id=JOB_QUEUE)
        preview_event = preview_button.click(
            handlers.preview,
            inputs=form,
            outputs=[preview_image, status, source_image],
            api_name="preview",
            show_progress_on=[preview_image],
            **job_events,
        )
        edit_event = edit_button.click(
            handlers.edit,
            inputs=[*form, side_by_side],
            outputs=[result_video, status],
            api_name="edit",
            show_progress_on=[result_video],
            **job_events,
        )
        for event in (preview_event, edit_event):
            event.failure(
                handlers.last_error,
                outputs=[status],
                concurrency_limit=None,
                api_visibility="private",
                show_progress="hidden",
            )
        cancel_button.click(
            handlers.cancel,
            outputs=[status],
            cancels=[preview_event, edit_event],  # also drops this page's queued jobs
            concurrency_limit=None,  # never waits behind the job it cancels
            api_visibility="private",
        )
        video.change(
            handlers.show_upload,
            inputs=[video],
            outputs=[shown, status],
            show_progress="minimal",
            api_visibility="private",
            concurrency_limit=1,  # previews queue: beside the jobs, never many at once
            concurrency_id=PREVIEW_QUEUE,
        )
        video.change(
            handlers.suggest,
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


def advanced_fields(cap: int) -> dict[str, gr.components.Component]:
    """The Advanced section's fields by option name, in the handlers' order."""
    fields = {**_selection_fields(cap), **_guidance_fields()}
    assert tuple(fields) == FORM_FIELDS[4:-1]  # noqa: S101 - the API's parameter order
    return fields


def _selection_fields(cap: int) -> dict[str, gr.components.Component]:
    """Steps, size and which frames: at most ``cap`` of them on this server."""
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
    return {
        "steps": steps,
        "size": size,
        "max_frames": max_frames,
        "start": start,
        "end": end,
        "stride": stride,
    }


def _guidance_fields() -> dict[str, gr.components.Component]:
    """How the frames are edited: guidance, attention, anchor, latent guidance, seed, batch."""
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
    return {
        "guidance_scale": guidance_scale,
        "attend": attend,
        "anchor": anchor,
        "latent_guidance_weight": latent_guidance_weight,
        "latent_guidance_steps": latent_guidance_steps,
        "seed": seed,
        "frame_batch": frame_batch,
    }
