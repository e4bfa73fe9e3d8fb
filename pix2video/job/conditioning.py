"""Conditioning: what the UNet sees beside the latent, frame by frame.

One small interface, `Conditioning`: the per-frame part of the depth cache key
(`sources`), the per-frame array as it is stored (`frame`, `row_shape`, `dtype`: compact,
control images stay uint8) and how stored rows become what the model reads (`to_model`).
Nothing here holds a frame's conditioning: the job writes each one to disk as it is made
(`frame_store.FrameArrays`) and the edit reads it back a few frames at a time
(`ConditioningRows`), so no kind of conditioning can grow the process with the clip.
SD2-depth sees a depth map, estimated by
the checkpoint's estimator (`EstimatedDepth`) or read from `--depth-dir` (`DepthFolder`);
an SD 1.5 model sees one control image per ControlNet (`ControlImages`), each made by a
`ControlKind`: Canny edges, an estimated depth map, or the user's files.

A new kind of control image is one new `ControlKind` subclass, registered in
`CONTROL_KIND_CLASSES` under its name in `settings.CONTROL_KINDS` (which the command line,
the page and the error texts list; tests/test_layout.py checks the two agree); a new kind
of conditioning for another backbone is one new `Conditioning`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import EditSettings
from .source import SourceClip


class Conditioning:
    """The per-frame conditioning of a backbone: made and stored one frame at a time."""

    dtype = "float32"
    """How a frame's array is stored."""

    def sources(self, device) -> list:
        """Per frame, what its conditioning is made from: the depth cache key's part."""
        raise NotImplementedError

    def row_shape(self, pipe, height: int, width: int) -> tuple[int, ...]:
        """Shape of one frame's stored array (the model's row, `pipe.conditioning_shape`)."""
        return tuple(pipe.conditioning_shape(height, width))

    def frame(self, pipe, position: int, frame) -> Any:
        """The stored array (`row_shape`, `dtype`) of the frame at `position` (processing size)."""
        raise NotImplementedError

    def to_model(self, rows) -> Any:
        """(n, c, h, w) float32 tensor the model reads, from n stored rows (a numpy array)."""
        import torch

        return torch.from_numpy(rows)


class EstimatedDepth(Conditioning):
    """SD2-depth: the checkpoint's own depth estimator."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    def sources(self, device) -> list:
        return ["estimator"] * self.num_frames

    def frame(self, pipe, position: int, frame):
        return pipe.prepare_depth([frame], None).float().cpu().numpy()[0]


class DepthFolder(Conditioning):
    """SD2-depth: depth maps from `--depth-dir`, one `.npy` per frame, named like the frame."""

    def __init__(self, folder: Path, source: SourceClip) -> None:
        names = source.frame_names()
        self.files = [folder / f"{Path(n).stem}.npy" for n in names]
        self.source_size = source.reader.source_size
        for name, path in zip(names, self.files, strict=True):
            if not path.is_file():
                raise InputError(
                    f"The depth folder '{folder}' has no '{path.name}' for frame '{name}'."
                )

    def sources(self, device) -> list:
        from .cache import hash_file

        return [hash_file(path) for path in self.files]

    def frame(self, pipe, position: int, frame):
        from ..pipelines.depth import load_depth_maps

        path = self.files[position]
        maps = load_depth_maps(path.parent, [path.name], self.source_size)
        return pipe.prepare_depth([frame], maps).float().cpu().numpy()[0]


class ControlKind:
    """One ControlNet's control image of every frame (`--control`)."""

    def check_count(self, num_frames: int) -> None:
        """Fail early when the kind cannot give `num_frames` frames."""

    def load(self, device) -> None:
        """Load what the kind needs (a model), once the device is known."""

    def source(self, position: int) -> list:
        """What the frame's control image is made from (part of the depth cache key)."""
        raise NotImplementedError

    def image(self, position: int, frame, size: tuple[int, int]):
        """H x W x 3 uint8 control image of one frame at the processing size (w, h)."""
        raise NotImplementedError


class CannyControl(ControlKind):
    def __init__(self, settings: EditSettings) -> None:
        self.low, self.high = settings.canny_low, settings.canny_high

    def source(self, position: int) -> list:
        return ["canny", self.low, self.high]

    def image(self, position: int, frame, size: tuple[int, int]):
        from ..pipelines.control import canny_image

        return canny_image(frame, self.low, self.high)


class DepthControl(ControlKind):
    """A depth map from a depth-estimation model (`--depth-model`, kept loaded)."""

    def __init__(self, settings: EditSettings) -> None:
        from ..models import default_depth_model

        self.model = settings.depth_model or default_depth_model(settings.model)
        self.estimator = None

    def load(self, device) -> None:
        from .cache import model_fingerprint

        self.estimator = load_depth_estimator(self.model, str(device))
        self.fingerprint = model_fingerprint(self.estimator.name)

    def source(self, position: int) -> list:
        return ["depth", self.fingerprint]

    def image(self, position: int, frame, size: tuple[int, int]):
        from ..pipelines.control import depth_image

        return depth_image(self.estimator(frame), size)


class FileControl(ControlKind):
    """The user's control frames: a folder, a video, or one image for every frame."""

    def __init__(self, path: str) -> None:
        from ..pipelines.control import ControlFiles

        self.files = ControlFiles(path)

    def check_count(self, num_frames: int) -> None:
        self.files.check_count(num_frames)

    def load(self, device) -> None:
        from .cache import hash_file

        # a video or one image for all frames: hashed once
        self.whole = hash_file(self.files.path) if self.files.files is None else None

    def source(self, position: int) -> list:
        from .cache import hash_file

        if self.whole is not None:
            return ["file", self.whole, position]
        return ["file", hash_file(self.files.files[position])]

    def image(self, position: int, frame, size: tuple[int, int]):
        return self.files.frame(position, size)


CONTROL_KIND_CLASSES: dict[str, type[ControlKind]] = {
    "canny": CannyControl,
    "depth": DepthControl,
}
"""`--control` names and their classes; any other value is a path (`FileControl`)."""


def control_kinds(settings: EditSettings) -> list[ControlKind]:
    """One `ControlKind` per `--control`, in order (user files are opened now: fail early)."""
    return [
        CONTROL_KIND_CLASSES[c](settings) if c in CONTROL_KIND_CLASSES else FileControl(c)
        for c in settings.control
    ]


class ControlImages(Conditioning):
    """SD 1.5 + ControlNets: one control image per ControlNet, in their order.

    Stored as made, uint8 at the processing size (a quarter of the float rows the model
    reads). Not recomputed per step: the edit has no frames to make them from (decoding
    the clip again at every step costs more than reading the stored images back).
    """

    dtype = "uint8"

    def __init__(self, kinds: list[ControlKind], source: SourceClip) -> None:
        self.kinds = kinds
        self.num_frames = source.num_frames
        self.size = (source.width, source.height)

    def sources(self, device) -> list:
        for kind in self.kinds:
            kind.load(device)
        return [[kind.source(i) for kind in self.kinds] for i in range(self.num_frames)]

    def frame(self, pipe, position: int, frame):
        images = [kind.image(position, frame, self.size) for kind in self.kinds]
        return pipe.control_rows([frame], [images]).numpy()[0]

    def to_model(self, rows):
        import torch

        from ..pipelines.sd15_controlnet import control_to_float

        return control_to_float(torch.from_numpy(rows))


class ControlLatents(ControlImages):
    """SD3 + ControlNets, FLUX.1 Depth/Canny: the control images as the model reads them,
    VAE-encoded (the pipeline's `prepare_conditioning`), so each frame's are encoded
    once; stored float32 (16 channels at 1/8 size: a third of the images' bytes)."""

    dtype = "float32"

    def frame(self, pipe, position: int, frame):
        images = [kind.image(position, frame, self.size) for kind in self.kinds]
        return pipe.prepare_conditioning([frame], control_images=[images]).cpu().numpy()[0]

    def to_model(self, rows):
        return Conditioning.to_model(self, rows)


class ConditioningRows:
    """The edit's `edit_loop.FrameConditioning`: a few frames' rows, read from disk per call."""

    def __init__(self, conditioning: Conditioning, arrays, keys: list[str], tracker) -> None:
        self.conditioning, self.arrays, self.keys, self.tracker = (
            conditioning, arrays, keys, tracker,
        )  # fmt: skip

    def __call__(self, frames: list[int]):
        rows = self.arrays.read([self.keys[i] for i in frames])
        return self.tracker.track(self.conditioning.to_model(rows))


def make_conditioning(
    settings: EditSettings, kinds: list[ControlKind], depth_dir: Path | None, source: SourceClip
) -> Conditioning:
    """The conditioning the settings ask for (ControlNets' control images, or depth)."""
    depth = DepthFolder(depth_dir, source) if depth_dir is not None else None  # checked now
    if settings.controlnet or settings.control:  # ControlNets, or FLUX.1 Depth/Canny's own
        from ..pipelines.checkpoints import is_flux_checkpoint, is_sd3_checkpoint

        latents = is_sd3_checkpoint(settings.model) or is_flux_checkpoint(settings.model)
        return (ControlLatents if latents else ControlImages)(kinds, source)
    return depth if depth is not None else EstimatedDepth(source.num_frames)


@functools.lru_cache(maxsize=1)
def load_depth_estimator(model: str, device: str):
    """The depth model of `--control depth` (kept loaded between jobs)."""
    from ..pipelines.control import DepthEstimator

    return DepthEstimator(model, device)
