"""pix2video: text-guided video editing with a depth-conditioned image diffusion model.

The Pix2Video method (Ceylan, Huang, Mitra, ICCV 2023) on current diffusers. The public API:

    from pix2video import EditSettings, edit_clip, preview_anchor
    from pix2video import Pix2VideoPipeline, load_pipeline

- `EditSettings` / `edit_clip` / `preview_anchor` (`settings`, `job`): one clip end to end,
  with cache, resume, progress and cancellation; what the CLI and the web UI run.
- `Pix2VideoPipeline` (`pipelines.sd2_depth`, SD2-depth) and `Pix2VideoControlNetPipeline`
  (`pipelines.sd15_controlnet`, SD 1.5 + ControlNets), `Pix2VideoSDXLControlNetPipeline`
  (`pipelines.sdxl`, SDXL + ControlNets): the algorithm top to bottom on in-memory frames;
  `load_pipeline` picks the one a checkpoint needs (`pipelines.checkpoints`).
- `core.edit_loop`: the (frame, step) loop over a noise predictor, shared by every backbone
  (`core.options.EditOptions`: the method's options, checked once);
  `core.attention`: the anchor frame, the previous frame, the feature store and the injection
  processor; `core.guidance`: the guided latent update; `core.inversion`: DDIM step and
  inversion.
- `pix2video.batch`: many clips in one run (a JOBS file; in-process or on a Ray cluster).

The package by layer, each importing only those below it: the root (`errors`, `atomic`,
`quiet`, `models`, `settings`), `media`, `core`, `pipelines`, `evaluation` and `job`, then
the front ends `cli`, `ui` and `batch`.

Names are imported on first use, so `import pix2video` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import EditCancelled, InputError, ModelNotAvailableError, Pix2VideoError, VideoError

__version__ = "0.1.0"

_LAZY = {
    "EditSettings": "settings",
    "ATTEND_MODES": "core.options",
    "edit_clip": "job",
    "preview_anchor": "job",
    "suggest_source_prompt": "job",
    "EditJob": "job",
    "EditResult": "job",
    "AnchorPreview": "job",
    "PipelineCache": "job",
    "Pix2VideoPipeline": "pipelines.sd2_depth",
    "Pix2VideoControlNetPipeline": "pipelines.sd15_controlnet",
    "Pix2VideoSDXLControlNetPipeline": "pipelines.sdxl",
    "Pix2VideoOutput": "pipelines.backbone",
    "EditOptions": "core.options",
    "load_pipeline": "pipelines.checkpoints",
}

__all__ = [  # the errors, then the names of _LAZY
    "EditCancelled",
    "InputError",
    "ModelNotAvailableError",
    "Pix2VideoError",
    "VideoError",
    "EditSettings",
    "ATTEND_MODES",
    "edit_clip",
    "preview_anchor",
    "suggest_source_prompt",
    "EditJob",
    "EditResult",
    "AnchorPreview",
    "PipelineCache",
    "Pix2VideoPipeline",
    "Pix2VideoControlNetPipeline",
    "Pix2VideoSDXLControlNetPipeline",
    "Pix2VideoOutput",
    "EditOptions",
    "load_pipeline",
]

if TYPE_CHECKING:
    from .core.options import ATTEND_MODES, EditOptions
    from .job import (
        AnchorPreview,
        EditJob,
        EditResult,
        PipelineCache,
        edit_clip,
        preview_anchor,
        suggest_source_prompt,
    )
    from .pipelines.backbone import Pix2VideoOutput
    from .pipelines.checkpoints import load_pipeline
    from .pipelines.sd2_depth import Pix2VideoPipeline
    from .pipelines.sd15_controlnet import Pix2VideoControlNetPipeline
    from .pipelines.sdxl import Pix2VideoSDXLControlNetPipeline
    from .settings import EditSettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pix2video' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
