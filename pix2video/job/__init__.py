"""Editing one clip end to end: the job every front end runs (CLI, web UI, batch, Python).

    from pix2video import EditSettings, edit_clip
    result = edit_clip(EditSettings("clip.mp4", "a crystal swan", "out.mp4", model="tiny"))

An edit reads like the method: check the paths, **read** the clip (one pass: sizes, frame
hashes, the anchor frame), **condition** it (depth, or control images for ControlNets; a
local edit's masks), load the model and encode the prompts (captioning the anchor frame when
no source prompt is given), **invert** every frame, **edit** them in order, and **write**
the result (`edit_job.EditJob`, one module per stage beside it). Frames are streamed: each
pass decodes them one at a time (`media.open_clip`) and only latents are kept, so a clip of
any length takes the same memory for its frames (`EditResult.peak_frames_held`). Every
stage is cached on disk (`cache`), keyed by content hashes (`keys`): a killed or cancelled
job resumes where it stopped, and a new prompt for the same clip reuses depth and inversion.
`preview_anchor` runs the same stages for the anchor frame alone; the anchor attends to no
other frame, so its preview is exactly the anchor frame of the full edit (up to float
rounding when `--frame-batch` puts it in a call with other frames), and the full edit
then reuses its inversion.

Progress is reported as ``progress(stage, done, total)`` with the stages of `STAGES`;
cancellation is cooperative: set the `threading.Event` given as ``cancel`` and the job
raises `EditCancelled` before its next UNet evaluation, leaving the cache resumable and
nothing at the output path (outputs are written atomically).

Layer: on `pipelines`, `core`, `media` and the package root; the front ends (`cli`, `ui`,
`batch`) call it.
"""

from .checks import check_latents_dir, check_output_path, check_writable_folder, resolve_device
from .edit_job import EditJob, edit_clip, preview_anchor, suggest_source_prompt
from .latents import FrameRows
from .loading import PipelineCache
from .results import (
    CANCELLED,
    CANCELLED_NO_CACHE,
    STAGES,
    AnchorPreview,
    EditResult,
    MessageCallback,
    ProgressCallback,
)

__all__ = [
    "CANCELLED",
    "CANCELLED_NO_CACHE",
    "STAGES",
    "AnchorPreview",
    "EditJob",
    "EditResult",
    "FrameRows",
    "MessageCallback",
    "PipelineCache",
    "ProgressCallback",
    "check_latents_dir",
    "check_output_path",
    "check_writable_folder",
    "edit_clip",
    "preview_anchor",
    "resolve_device",
    "suggest_source_prompt",
]
