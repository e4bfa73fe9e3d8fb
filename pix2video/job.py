"""Editing one clip end to end: the job every front end runs (CLI, web UI, batch, Python).

    from pix2video import EditSettings, edit_clip
    result = edit_clip(EditSettings("clip.mp4", "a crystal swan", "out.mp4", model="tiny"))

`EditJob` does, in order: validate the settings and the paths (before any model work),
open the clip and hash its frames, load the model (kept by a `PipelineCache` between jobs),
check the prompts, caption the anchor frame when no source prompt is given, then depth ->
inversion -> editing -> decoding and writing. Frames are streamed: each pass decodes them
one at a time (`video.open_clip`) and only latents are kept, so a clip of any length takes
the same memory for its frames (`EditResult.peak_frames_held`). Every stage is cached on disk (`cache.py`),
keyed by content hashes: a killed or cancelled job resumes where it stopped, and a new
prompt for the same clip reuses depth and inversion. `preview()` runs the same stages for
the anchor frame alone; the anchor attends to no other frame, so its preview is exactly
the anchor frame of the full edit (up to float rounding when `--frame-batch` puts it in a
call with other frames), and the full edit then reuses its inversion.

Progress is reported as ``progress(stage, done, total)`` with the stages of `STAGES`;
cancellation is cooperative: set the `threading.Event` given as ``cancel`` and the job
raises `EditCancelled` before its next UNet evaluation, leaving the cache resumable and
nothing at the output path (outputs are written atomically).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .atomic import atomic_path, atomic_write_text
from .errors import EditCancelled, InputError, ModelNotAvailableError, VideoError
from .settings import CONTROL_KINDS, DTYPES, EditSettings, parse_frame_batch

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .backbone import Pix2VideoBase

T = TypeVar("T")
ProgressCallback = Callable[[str, int, int], None]
MessageCallback = Callable[[str], None]

STAGES: dict[str, str] = {
    "masks": "frames",
    "depth": "frames",
    "inversion": "frames",
    "editing": "frame-steps",
    "writing": "frames",
}
"""Progress stages in order, with the unit their counts are in."""

CANCELLED = "The edit was cancelled; finished work is cached: run it again to resume."
CANCELLED_NO_CACHE = "The edit was cancelled; nothing was kept (the cache is off)."


@dataclass
class EditResult:
    """What an edit did: where the output went, what it cost, what came from the cache."""

    output: str
    frames: int
    frame_indices: list[int]
    size: tuple[int, int]  # (width, height) the model ran at
    output_size: tuple[int, int]  # (width, height) of the written frames
    fps: float
    has_audio: bool
    source_prompt: str
    captioned: bool
    device: str
    dtype: str
    steps: int
    depth_cached: int = 0
    depth_computed: int = 0
    inversion_cached: int = 0
    inversion_computed: int = 0
    editing: str = "computed"  # "computed", "resumed" (from a checkpoint) or "cached"
    resumed_from_step: int | None = None  # last finished step of the checkpoint resumed from
    checkpoints_saved: int = 0
    checkpoint_seconds: float = 0.0
    unet_evaluations_inversion: int = 0
    unet_evaluations_editing: int = 0
    feature_store_peak_bytes: int = 0
    frame_batch: int = 1  # frames per editing UNet call (--frame-batch, "auto" resolved)
    peak_frames_held: int = 0  # decoded frames alive at once (source, resized, output)
    masked: bool = False  # a local edit
    mask_coverage: float = 1.0  # mean share of each frame's pixels the edit may change
    cache_enabled: bool = True
    latents_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, and "total"

    @property
    def unet_evaluations(self) -> int:
        return self.unet_evaluations_inversion + self.unet_evaluations_editing

    def describe_mask(self) -> str:
        """A local edit's line in the summaries (CLI, web page)."""
        return (
            f"Local edit: {100 * self.mask_coverage:.0f}% of the frame area edited on average; "
            "every other pixel is the source's."
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet_evaluations"] = self.unet_evaluations
        return data


@dataclass
class AnchorPreview:
    """The anchor frame edited alone: what the full edit's anchor frame will be."""

    source: np.ndarray  # the anchor frame at the processing size
    edited: np.ndarray
    frame_index: int  # in the input (source frame number, or position in an image folder)
    source_prompt: str
    captioned: bool
    unet_evaluations: int
    seconds: float


class FrameTracker:
    """Counts decoded frames alive at once, through weak references.

    Every frame the job decodes, resizes or composes is tracked; `peak` is the most that
    were alive together, the bound that lets a clip of any length fit in the same memory.
    Counted when a frame is added (the only moment the peak can grow), with plain weak
    references: no finalizer callbacks, which could swallow a Ctrl-C arriving inside them.
    """

    def __init__(self) -> None:
        self._alive: list[weakref.ref] = []
        self.peak = 0

    def track(self, frame: T) -> T:
        self._alive = [ref for ref in self._alive if ref() is not None]
        self._alive.append(weakref.ref(frame))
        self.peak = max(self.peak, len(self._alive))
        return frame


class FrameRows:
    """Per-frame results of a pass (depth, x_T...) written into one tensor allocated up front.

    Why not a dict of small tensors: kept for the whole pass while the models allocate and
    free frame-sized buffers, they pinned heap pages glibc could then not reuse or return;
    150 frames of depth and inversion grew the process by 230 MiB (tiny model, 256 px).
    """

    def __init__(self, positions: list[int], shape: tuple[int, ...]) -> None:
        import torch

        self._row = {position: row for row, position in enumerate(positions)}
        self._filled: set[int] = set()
        self.tensor = torch.empty((len(positions), *shape))

    def __contains__(self, position: int) -> bool:
        return position in self._filled

    def __len__(self) -> int:
        return len(self._filled)

    def __setitem__(self, position: int, value) -> None:
        self.tensor[self._row[position]] = value.reshape(self.tensor.shape[1:])
        self._filled.add(position)

    def __getitem__(self, position: int):
        """(1, *shape): a view of the frame's row."""
        return self.tensor[self._row[position]][None]


class PipelineCache:
    """Loaded pipelines by everything that shapes their weights, so a server loads a model once.

    The key is the model, device, dtype and compilation, and the ControlNets, LoRAs (with
    their scales: they are fused into the weights), depth model and single-file config.
    Keeps the most recent `size` pipelines; thread-safe.
    """

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self._pipes: dict[tuple, Pix2VideoBase] = {}
        self._lock = threading.Lock()

    def get(
        self,
        model: str,
        device,
        dtype,
        compile: bool = False,
        controlnets: tuple[str, ...] = (),
        loras: tuple[tuple[str, float], ...] = (),
        depth_model: str | None = None,
        model_config: str | None = None,
    ) -> Pix2VideoBase:
        """The loaded pipeline; on a GPU its UNet is channels-last (faster convolutions)."""
        import torch

        from .pipeline import load_pipeline

        extras = (tuple(controlnets), tuple(loras), depth_model, model_config)
        key = (model, str(device), str(dtype), compile, extras)
        with self._lock:
            pipe = self._pipes.pop(key, None)
            if pipe is None:
                pipe = load_pipeline(model, device, dtype, *extras)
                if pipe.device.type == "cuda":
                    pipe.unet.to(memory_format=torch.channels_last)
                if compile:
                    pipe.unet.compile()  # in place: the attention processors stay swappable
            self._pipes[key] = pipe  # most recent last
            while len(self._pipes) > self.size:
                self._pipes.pop(next(iter(self._pipes)))
            return pipe


def edit_clip(
    settings: EditSettings,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pipelines: PipelineCache | None = None,
    warn: MessageCallback | None = None,
    info: MessageCallback | None = None,
    library_logs: bool = False,
) -> EditResult:
    """Edit one clip as `pix2video edit` does; raises `Pix2VideoError` on anything a user can fix."""
    return EditJob(settings, progress, cancel, pipelines, warn, info, library_logs).run()


def preview_anchor(
    settings: EditSettings,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pipelines: PipelineCache | None = None,
    warn: MessageCallback | None = None,
    info: MessageCallback | None = None,
    library_logs: bool = False,
) -> AnchorPreview:
    """Invert and edit only the anchor frame (the full edit's anchor frame; see the module doc)."""
    return EditJob(settings, progress, cancel, pipelines, warn, info, library_logs).preview()


def suggest_source_prompt(settings: EditSettings, pipelines: PipelineCache | None = None) -> str:
    """The captioner's description of the anchor frame (cached), e.g. to pre-fill a form.

    Only the reading options, `anchor`, `captioner`, `device` and the cache matter; the
    edit prompt may still be empty.
    """
    job = EditJob(
        settings.replace(source_prompt=None, prompt=settings.prompt.strip() or "(none yet)"),
        pipelines=pipelines,
    )
    job.read_input(anchor_only=True)
    device, _ = resolve_device(settings.device, settings.dtype)
    return caption_anchor(
        job.anchor_source_frame, settings.captioner, str(device), job.cache, job.warn
    )


class EditJob:
    """One edit of one clip, stage by stage (see the module docstring)."""

    def __init__(
        self,
        settings: EditSettings,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        pipelines: PipelineCache | None = None,
        warn: MessageCallback | None = None,
        info: MessageCallback | None = None,
        library_logs: bool = False,
    ) -> None:
        """`library_logs` leaves diffusers'/transformers' own logs and progress bars on."""
        self.settings = settings.validate()
        self.library_logs = library_logs
        self.progress = progress or (lambda stage, done, total: None)
        self.cancel = cancel or threading.Event()
        self.pipelines = pipelines or PipelineCache()
        self.warn = warn or (lambda message: None)
        self.info = info or (lambda message: None)
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()
        self.pipe: Pix2VideoBase | None = None
        self.control_files: dict[int, Any] = {}  # ControlNet index -> ControlFiles
        self._cache = None
        self._warned: set[str] = set()
        self.frames_held = FrameTracker()
        self.mask_files = None
        self.raw_masks: dict[int, np.ndarray] = {}  # position -> mask (packed bits)
        self.latent_masks: dict[int, np.ndarray] = {}  # position -> (h, w) bool
        self.mask_fractions: dict[int, float] = {}  # position -> share of pixels with alpha > 0

    @property
    def cache(self):
        """The on-disk cache (imported lazily: it needs torch, bad input should fail first)."""
        if self._cache is None:
            from .cache import Cache

            self._cache = Cache(None if self.settings.no_cache else self.settings.cache_dir)
        return self._cache

    @property
    def cancelled_message(self) -> str:
        return CANCELLED_NO_CACHE if self.settings.no_cache else CANCELLED

    # ------------------------------------------------------------------ checks and input
    def check_paths(self) -> None:
        """Fail now, not after an hour of computing, on a path that cannot work."""
        s = self.settings
        self.input_path = Path(s.input).expanduser()
        self.output = Path(s.output).expanduser()
        check_output_path(self.output, self.input_path)
        self.latents_dir = Path(s.save_latents).expanduser() if s.save_latents else None
        if self.latents_dir is not None:
            check_latents_dir(self.latents_dir)
        self.stats_path = Path(s.stats_json).expanduser() if s.stats_json else None
        if self.stats_path is not None:
            check_writable_folder(self.stats_path.parent, self.stats_path)
        self.depth_dir = Path(s.depth_dir).expanduser() if s.depth_dir else None
        if self.depth_dir is not None and not self.depth_dir.is_dir():
            raise InputError(f"The depth folder '{self.depth_dir}' does not exist.")
        self.masks_dir = Path(s.save_masks).expanduser() if s.save_masks else None
        if self.masks_dir is not None:
            check_output_path(self.masks_dir)
        if s.mask is not None:
            from .masks import MaskFiles

            self.mask_files = MaskFiles(s.mask)
        for k, control in enumerate(s.control):
            if control not in CONTROL_KINDS:
                from .control import ControlFiles

                self.control_files[k] = ControlFiles(control)

    def read_input(self, anchor_only: bool = False) -> None:
        """Open the selection and make one pass over it: sizes, frame hashes, the anchor frame.

        Frames are decoded and resized one at a time and not kept (a clip of any length
        takes the same memory); later stages decode them again. With `anchor_only` and the
        first frame as anchor, the pass stops after that frame.
        """
        from . import video

        s = self.settings
        tic = time.perf_counter()
        self.reader = self._open_reader()  # fails on a bad input before torch is imported

        from .cache import hash_array

        self.width, self.height = video.fit_size(*self.reader.source_size, video.parse_size(s.size))
        self.frame_hashes: list[str] = []
        for position, frame, small in self._frames():
            self.frame_hashes.append(hash_array(small))
            if position == 0 or s.anchor == "last":
                self.anchor_source_frame, self.anchor_frame = frame, small
            if anchor_only and s.anchor == "first":
                break
        self.num_frames = len(self.frame_hashes)
        self.anchor_position = 0 if s.anchor == "first" else self.num_frames - 1
        self.anchor_index = self.reader.start_index + self.anchor_position * self.reader.stride
        self.seconds["reading"] = time.perf_counter() - tic

    def _open_reader(self):
        from . import video

        s = self.settings
        path = Path(s.input).expanduser()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader = video.open_clip(path, s.start, s.end, s.stride, s.max_frames)
        self._forward_warnings(caught, path)
        return reader

    def _forward_warnings(self, caught, path: Path) -> None:
        for warning in caught:
            message = str(warning.message)
            if issubclass(warning.category, UserWarning) and str(path) in message:
                if message not in self._warned:
                    self._warned.add(message)
                    self.warn(message)

    def _frames(self, positions: list[int] | None = None) -> Iterator[tuple[int, Any, Any]]:
        """One decoding pass: (position, source frame, frame at the processing size).

        Only `positions` are resized and yielded (all when None); the pass stops after the
        last of them. Every frame is counted in `frames_held` while it is alive.
        """
        from . import video

        wanted = None if positions is None else set(positions)
        last = None if positions is None else max(positions, default=-1)
        iterator = iter(self.reader)
        position = 0
        try:
            while last is None or position <= last:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    item = next(iterator, None)
                self._forward_warnings(caught, Path(self.settings.input).expanduser())
                if item is None:
                    return
                frame = self.frames_held.track(item[1])
                del item
                if wanted is None or position in wanted:
                    small = video.resize_frames([frame], (self.width, self.height))[0]
                    yield position, frame, self.frames_held.track(small)
                    del small
                del frame
                position += 1
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a pass stopped early releases its decoder now

    def _check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise EditCancelled(self.cancelled_message)

    # ------------------------------------------------------------------ model and prompts
    def prepare(self, anchor_only: bool = False) -> None:
        """Everything before the per-frame work: checks, input, model, prompts, cache keys."""
        from .quiet import silence_libraries

        s = self.settings
        self.check_paths()
        self.read_input(anchor_only=anchor_only)
        if self.mask_files is not None:
            self.mask_files.check_count(self.num_frames)  # a folder's count fails here, early
        for files in self.control_files.values():
            files.check_count(self.num_frames)
        depth_sources = ["estimator"] * self.num_frames
        self.depth_files: list[Path] | None = None
        if self.depth_dir is not None:
            from .cache import hash_file

            names = frame_names(self.reader, self.num_frames)
            self.depth_files = [self.depth_dir / f"{Path(n).stem}.npy" for n in names]
            for name, path in zip(names, self.depth_files, strict=True):
                if not path.is_file():
                    raise InputError(
                        f"The depth folder '{self.depth_dir}' has no '{path.name}' for frame "
                        f"'{name}'."
                    )
            depth_sources = [hash_file(path) for path in self.depth_files]
        device, dtype = resolve_device(s.device, s.dtype)  # imports torch: after the cheap checks
        from .pipeline import default_inversion_batch

        self.inversion_batch = s.inversion_batch or default_inversion_batch(device)
        self._check_cancelled()

        from . import pipeline  # noqa: F401 - imports diffusers, whose logs are silenced next

        if not self.library_logs:
            silence_libraries()
        tic = time.perf_counter()
        pipe = self.pipelines.get(
            s.model,
            device,
            dtype,
            s.compile,
            controlnets=s.controlnet,
            loras=s.loras,
            depth_model=s.depth_model if not s.controlnet else None,
            model_config=s.model_config,
        )
        if s.controlnet:
            pipe.set_controlnet_scales(s.control_scales)
        if s.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        self.pipe = pipe
        self.check_pipeline_inputs()
        self.edit_embedding = pipe.encode_prompt(s.prompt)
        self.negative_embedding = pipe.encode_prompt(s.negative_prompt)
        self.seconds["loading"] = time.perf_counter() - tic

        tic = time.perf_counter()
        self.source_prompt, self.captioned = s.source_prompt, False
        if not (self.source_prompt or "").strip():
            self.source_prompt = caption_anchor(
                self.anchor_source_frame, s.captioner, str(device), self.cache, self.warn
            )
            self.captioned = True
            self.info(
                f'Source prompt (caption of frame {self.anchor_index}): "{self.source_prompt}"'
            )
        try:
            self.source_embedding = pipe.encode_prompt(self.source_prompt)
        except InputError as exc:
            if not self.captioned:
                raise
            raise InputError(
                f"The caption {self.source_prompt[:40]!r}... is too long for the text encoder; "
                "pass a shorter --source-prompt."
            ) from exc
        self.seconds["caption"] = time.perf_counter() - tic
        self.prepare_masks(device, [self.anchor_position] if anchor_only else None)
        if s.controlnet:
            depth_sources = self._control_sources(device)
        self._make_keys(device, dtype, depth_sources)

    def _control_sources(self, device) -> list:
        """Per frame, what its control images are made from (the depth cache key's part)."""
        from .cache import hash_file, model_fingerprint

        s = self.settings
        self.depth_estimator = None
        if "depth" in s.control:
            from .models import DEFAULT_DEPTH_MODEL

            self.depth_estimator = load_depth_estimator(
                s.depth_model or DEFAULT_DEPTH_MODEL, str(device)
            )
        estimator = model_fingerprint(self.depth_estimator.name) if self.depth_estimator else None
        whole = {  # a video or one image for all frames: hashed once
            k: hash_file(files.path)
            for k, files in self.control_files.items()
            if files.files is None
        }
        sources = []
        for i in range(self.num_frames):
            controls = []
            for k, control in enumerate(s.control):
                if control == "canny":
                    controls.append(["canny", s.canny_low, s.canny_high])
                elif control == "depth":
                    controls.append(["depth", estimator])
                elif k in whole:
                    controls.append(["file", whole[k], i])
                else:
                    controls.append(["file", hash_file(self.control_files[k].files[i])])
            sources.append(controls)
        return sources

    def check_pipeline_inputs(self) -> None:
        s = self.settings
        self.pipe.check_inputs(
            [self.anchor_frame],  # all frames have its size
            s.prompt,
            s.source_prompt or "",
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            negative_prompt=s.negative_prompt,
            attend=s.attend,
            anchor=s.anchor,
            latent_guidance_weight=s.latent_guidance_weight,
            latent_guidance_steps=s.latent_guidance_steps,
            latent_guidance_target=s.latent_guidance_target,
            seed=s.seed,
        )

    def _make_keys(self, device, dtype, depth_sources: list[str]) -> None:
        """Content-hash cache keys of every stage (see `cache.py`)."""
        from .cache import hash_array, make_key, model_fingerprint
        from .guidance import latent_guidance_schedule

        s = self.settings
        model_id = model_fingerprint(s.model)
        if (
            s.controlnet or s.lora or s.model_config or s.depth_model
        ):  # SD2's keys stay as they were
            model_id = {
                "checkpoint": model_id,
                "model_config": model_fingerprint(s.model_config) if s.model_config else None,
                "controlnets": [
                    [model_fingerprint(c), scale]
                    for c, scale in zip(s.controlnet, s.control_scales, strict=True)
                ],
                "loras": [[model_fingerprint(name), scale] for name, scale in s.loras],
                "depth_model": model_fingerprint(s.depth_model) if s.depth_model else None,
            }
        compute = {
            "device": device.type,
            "dtype": str(dtype).removeprefix("torch."),
            "vae_tiling": s.vae_tiling,
        }
        self.device_name, self.dtype_name = str(device), compute["dtype"]
        size = [self.width, self.height]
        frame_hashes = self.frame_hashes
        # depth/control images depend on the depth estimator, not on ControlNets or LoRAs
        depth_id = model_fingerprint(s.model)
        if s.controlnet:
            depth_id = None  # the control sources name everything (depth model included)
        elif s.depth_model:
            depth_id = {"checkpoint": depth_id, "depth_model": model_fingerprint(s.depth_model)}
        self.depth_keys = [
            make_key("depth", model=depth_id, compute=compute, frame=h, size=size, depth=d)
            for h, d in zip(frame_hashes, depth_sources, strict=True)
        ]
        self.inversion_keys = [
            make_key(
                "inversion",
                model=model_id,
                compute=compute,
                frame=h,
                size=size,
                steps=s.steps,
                source_prompt=self.source_prompt,
                depth=d,
            )
            for h, d in zip(frame_hashes, self.depth_keys, strict=True)
        ]
        guided = len(
            latent_guidance_schedule(
                s.steps, s.latent_guidance_weight, s.latent_guidance_steps, s.latent_guidance_target
            )
        )

        def edit_key(positions: list[int]) -> str:
            masks = None
            if s.masked:  # the latent masks are what the edit depends on
                masks = [hash_array(self.latent_masks[i]) for i in positions]
            return make_key(
                "edit",
                model=model_id,
                compute=compute,
                inversions=[self.inversion_keys[i] for i in positions],
                masks=masks,
                prompt=s.prompt,
                negative_prompt=s.negative_prompt,
                steps=s.steps,
                guidance_scale=float(s.guidance_scale),
                attend=s.attend,
                anchor=s.anchor,
                seed=s.seed,
                latent_guidance_weight=float(s.latent_guidance_weight) if guided else 0.0,
                latent_guidance_steps=guided,
                latent_guidance_target=s.latent_guidance_target if guided else None,
                feature_store_dtype=s.feature_store_dtype,
            )

        self.edit_key = edit_key(list(range(self.num_frames))) if self.prepared_all else None
        self.preview_key = edit_key([self.anchor_position])
        self.latent_shape = (4, self.height // 8, self.width // 8)

    # ------------------------------------------------------------------ local edits
    def prepare_masks(self, device, positions: list[int] | None = None) -> None:
        """A local edit's masks of the frames at `positions` (all when None), kept in memory.

        From `--mask` files, read in frame order, or segmented from `--mask-prompt` (cached
        per frame, and only the frames missing from the cache are decoded). Each mask is
        kept as packed bits with its latent mask; `--save-masks` writes the alphas used.
        """
        import numpy as np

        s = self.settings
        self.prepared_all = positions is None
        if not s.masked:
            return
        tic = time.perf_counter()
        positions = list(range(self.num_frames)) if positions is None else positions
        size = (self.width, self.height)
        if self.mask_files is not None:
            from .masks import binarize

            for done, i in enumerate(positions, 1):
                self._check_cancelled()
                self._keep_mask(i, binarize(self.mask_files.raw(i), size))
                self.progress("masks", done, len(positions))
            if self.prepared_all:
                self.mask_files.check_count(self.num_frames, read_all=True)
            self.mask_files.close()
        else:
            import torch

            from .cache import make_key, model_fingerprint

            model_id = model_fingerprint(s.mask_model)
            keys = {
                i: make_key(
                    "mask",
                    model=model_id,
                    frame=self.frame_hashes[i],
                    size=list(size),
                    prompt=s.mask_prompt,
                    threshold=float(s.mask_threshold),
                )
                for i in positions
            }
            for i in positions:
                cached = self.cache.load("mask", keys[i])
                if torch.is_tensor(cached) and tuple(cached.shape) == (self.height, self.width):
                    self._keep_mask(i, cached.numpy().astype(bool))
            todo = [i for i in positions if i not in self.raw_masks]
            segment = load_segmenter(s.mask_model, str(device)) if todo else None
            self.progress("masks", len(positions) - len(todo), len(positions))
            if todo:
                for i, _frame, small in self._frames(todo):
                    self._check_cancelled()
                    mask = segment(small, s.mask_prompt, s.mask_threshold)
                    self._save("mask", keys[i], torch.from_numpy(mask))
                    self._keep_mask(i, mask)
                    self.progress("masks", len(self.raw_masks), len(positions))
        self.mask_coverage = float(np.mean([self.mask_fractions[i] for i in positions]))
        if self.masks_dir is not None and self.prepared_all:
            self._save_masks()
        self.seconds["masks"] = time.perf_counter() - tic

    def _keep_mask(self, position: int, mask) -> None:
        import numpy as np

        from .masks import latent_mask

        self.raw_masks[position] = np.packbits(mask)
        alpha = self.alpha_at(position)
        self.mask_fractions[position] = float((alpha > 0).mean())
        self.latent_masks[position] = latent_mask(alpha, self.pipe.vae_scale_factor)

    def alpha_at(self, position: int):
        """(H, W) float32 alpha of a local edit's frame: the mask grown and feathered."""
        import numpy as np

        from .masks import mask_alpha

        s = self.settings
        count = self.width * self.height
        mask = np.unpackbits(self.raw_masks[position], count=count).reshape(self.height, -1)
        return mask_alpha(mask.astype(bool), s.mask_dilate, s.mask_feather)

    def _save_masks(self) -> None:
        """`--save-masks`: the alpha of every frame as a grey PNG, named like depth maps."""
        from PIL import Image

        from .masks import alpha_to_image

        names = frame_names(self.reader, self.num_frames)
        try:
            with atomic_path(self.masks_dir, directory=True) as tmp:
                for i, name in enumerate(names):
                    image = alpha_to_image(self.alpha_at(i))
                    Image.fromarray(image).save(tmp / f"{Path(name).stem}.png")
        except OSError as exc:
            raise InputError(
                f"Cannot save masks to {self.masks_dir} ({exc.strerror or exc})."
            ) from exc

    def _latent_masks(self, positions: list[int]):
        """(n, 1, h, w) bool tensor of the latent masks at `positions`, or None."""
        import numpy as np
        import torch

        if not self.settings.masked:
            return None
        return torch.from_numpy(np.stack([self.latent_masks[i] for i in positions]))[:, None]

    # ------------------------------------------------------------------ per-frame stages
    def depth_and_inversion(self, positions: list[int], result: EditResult | None = None):
        """(depth (n,1,h,w), x_T (n,4,h,w), trajectories) of the frames at `positions`.

        Cached per frame. One decoding pass, and none when everything is cached. Depth is
        estimated one frame at a time; frames missing from the inversion cache are inverted
        `inversion_batch` at a time, each stored as soon as its batch is done (a killed run
        keeps them). Only latents are kept, never the frames. A local edit also needs each
        frame's inversion trajectory (n, steps, 4, h, w); otherwise that is None.
        """
        import torch

        pipe, s = self.pipe, self.settings
        depth_shape = (1, *pipe.conditioning_shape(self.height, self.width))
        latent_shape = (1, *self.latent_shape)
        trajectory_shape = (1, s.steps, *self.latent_shape)
        depth = FrameRows(positions, depth_shape[1:])
        inverted = FrameRows(positions, latent_shape[1:])
        trajectories = FrameRows(positions if s.masked else [], trajectory_shape[1:])
        for i in positions:
            cached = self._load_checked("depth", self.depth_keys[i], depth_shape)
            if cached is not None:
                depth[i] = cached
            if s.masked:
                cached = self._load_checked("trajectory", self.inversion_keys[i], trajectory_shape)
                if cached is None:
                    continue  # inverted again, for its trajectory
                trajectories[i] = cached
            cached = self._load_checked("inversion", self.inversion_keys[i], latent_shape)
            if cached is not None:
                inverted[i] = cached
        depth_hits, inversion_hits = len(depth), len(inverted)
        todo = [i for i in positions if i not in depth or i not in inverted]
        timer = {"depth": 0.0, "inversion": 0.0}
        evaluations = pipe.unet_evaluations
        self.progress("depth", depth_hits, len(positions))
        self.progress("inversion", inversion_hits, len(positions))
        batch: list[tuple[int, torch.Tensor]] = []  # (position, VAE latent) waiting to invert

        def invert_batch() -> None:
            tic = time.perf_counter()
            with self.pipe_cancellable():
                values = pipe.invert(
                    torch.cat([latent for _, latent in batch]),
                    torch.cat([depth[i] for i, _ in batch]),
                    self.source_embedding,
                    s.steps,
                    batch_size=len(batch),
                    trajectory=s.masked,
                )
            if s.masked:
                values, paths = values
                for (i, _), path in zip(batch, paths.float().cpu(), strict=True):
                    trajectories[i] = path[None]
                    self._save("trajectory", self.inversion_keys[i], path[None])
            for (i, _), value in zip(batch, values.float().cpu(), strict=True):
                inverted[i] = value[None]
                self._save("inversion", self.inversion_keys[i], value[None])
            batch.clear()
            timer["inversion"] += time.perf_counter() - tic
            self.progress("inversion", len(inverted), len(positions))

        for i, _frame, small in self._frames(todo) if todo else ():
            self._check_cancelled()
            if i not in depth:
                tic = time.perf_counter()
                depth[i] = self._estimate_depth(i, small)
                self._save("depth", self.depth_keys[i], depth[i])
                timer["depth"] += time.perf_counter() - tic
                self.progress("depth", len(depth), len(positions))
            if i not in inverted:
                tic = time.perf_counter()
                with self.pipe_cancellable():
                    batch.append((i, pipe.encode_frames([small])))
                timer["inversion"] += time.perf_counter() - tic
                if len(batch) == self.inversion_batch:
                    invert_batch()
            del small
        if batch:
            invert_batch()
        if len(depth) < len(positions) or len(inverted) < len(positions):
            raise InputError(  # the file changed or lost frames since it was first read
                f"{self.settings.input} gave fewer frames on a second reading than on the "
                "first; is it being written to?"
            )
        self.seconds.update(timer)
        if result is not None:
            result.depth_cached, result.depth_computed = depth_hits, len(positions) - depth_hits
            result.inversion_cached = inversion_hits
            result.inversion_computed = len(positions) - inversion_hits
            result.unet_evaluations_inversion = pipe.unet_evaluations - evaluations
        return depth.tensor, inverted.tensor, trajectories.tensor if s.masked else None

    def _estimate_depth(self, position: int, frame):
        """One frame's conditioning: depth (SD2-depth: from `--depth-dir`, or the model's
        estimator) or control images (ControlNets: `control.py`)."""
        if self.settings.controlnet:
            return self._control_images(position, frame)
        maps = None
        if self.depth_files is not None:
            from .depth import load_depth_maps

            path = self.depth_files[position]
            maps = load_depth_maps(path.parent, [path.name], self.reader.source_size)
        return self.pipe.prepare_depth([frame], maps).float().cpu()

    def _control_images(self, position: int, frame):
        """(1, 3k, H, W) control images of one frame, one per ControlNet, in their order."""
        from .control import canny_image, depth_image

        s, size = self.settings, (self.width, self.height)
        images = []
        for k, control in enumerate(s.control):
            if control == "canny":
                images.append(canny_image(frame, s.canny_low, s.canny_high))
            elif control == "depth":
                images.append(depth_image(self.depth_estimator(frame), size))
            else:
                images.append(self.control_files[k].frame(position, size))
        return self.pipe.prepare_conditioning([frame], control_images=[images]).float().cpu()

    @contextlib.contextmanager
    def pipe_cancellable(self) -> Iterator[None]:
        """Within the block, the pipeline raises `EditCancelled` once `cancel` is set."""
        self.pipe.cancel_event = self.cancel
        try:
            yield
        except EditCancelled as exc:
            raise EditCancelled(self.cancelled_message) from exc
        finally:
            self.pipe.cancel_event = None

    def edit_latents(
        self,
        depth,
        inverted,
        key: str,
        result: EditResult | None = None,
        trajectories=None,
        positions: list[int] | None = None,
    ):
        """Final latents (clip order) of the frames at `positions` (all when None).

        Resumes from a step checkpoint; a local edit passes the frames' `trajectories`.
        """
        import torch

        from .guidance import latent_guidance_schedule, needs_frame_major

        s, pipe = self.settings, self.pipe
        num_frames = inverted.shape[0]
        target_of = latent_guidance_schedule(
            s.steps, s.latent_guidance_weight, s.latent_guidance_steps, s.latent_guidance_target
        )
        step_major = num_frames == 1 or not needs_frame_major(target_of)
        frame_batch = parse_frame_batch(s.frame_batch) if step_major else 1
        if not step_major and parse_frame_batch(s.frame_batch) not in ("auto", 1):
            self.warn(
                f"--frame-batch {s.frame_batch} is not used: a guidance target at a later step "
                f"({s.latent_guidance_target}) edits the frames one at a time."
            )
        resume = None
        if step_major and self.cache.enabled:
            resume = self.cache.load_checkpoint(key, num_frames, s.steps)
            if resume is not None and tuple(resume.latents.shape[1:]) != self.latent_shape:
                resume = None
        if resume is not None and result is not None:
            result.editing = "resumed"
            result.resumed_from_step = resume.step
        total = num_frames * s.steps
        self.progress("editing", 0 if resume is None else (resume.step + 1) * num_frames, total)

        last_saved = time.monotonic()

        def on_step_end(checkpoint) -> None:
            """At most one checkpoint per `checkpoint_interval` (plus the final latents)."""
            nonlocal last_saved
            if checkpoint.step == s.steps - 1:
                return  # the final latents are saved next
            if time.monotonic() - last_saved < s.checkpoint_interval:
                return
            t0 = time.perf_counter()
            if self._save("checkpoint", key, checkpoint) and result is not None:
                result.checkpoints_saved += 1
            last_saved = time.monotonic()
            if result is not None:
                result.checkpoint_seconds += time.perf_counter() - t0

        evaluations = pipe.unet_evaluations
        torch.manual_seed(s.seed)
        with self.pipe_cancellable():
            final, store = pipe.edit(
                inverted.to(pipe.device),
                depth.to(pipe.device),
                self.edit_embedding,
                self.negative_embedding,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                attend=s.attend,
                anchor=s.anchor,
                latent_guidance_weight=s.latent_guidance_weight,
                latent_guidance_steps=s.latent_guidance_steps,
                latent_guidance_target=s.latent_guidance_target,
                seed=s.seed,
                feature_store_dtype=_feature_store_dtype(s.feature_store_dtype, pipe),
                feature_store_device="cpu" if s.offload_features else None,
                progress=self.progress,
                resume=resume,
                on_step_end=on_step_end if step_major and self.cache.enabled else None,
                masks=self._latent_masks(positions or list(range(num_frames))),
                source_latents=trajectories,
                frame_batch=frame_batch,
            )
        if result is not None:
            result.unet_evaluations_editing = pipe.unet_evaluations - evaluations
            result.feature_store_peak_bytes = store.peak_nbytes
            result.frame_batch = store.chunk_size
        final = final.float().cpu()
        if self._save("final", key, final):
            self.cache.remove("checkpoint", key)
        return final

    # ------------------------------------------------------------------ the two entry points
    def preview(self) -> AnchorPreview:
        """Depth, inversion and editing of the anchor frame alone, decoded."""
        tic = time.perf_counter()
        self.prepare(anchor_only=True)
        a = self.anchor_position
        evaluations = self.pipe.unet_evaluations
        final = self._load_checked("final", self.preview_key, (1, *self.latent_shape))
        if final is None:
            depth, inverted, trajectories = self.depth_and_inversion([a])
            final = self.edit_latents(
                depth, inverted, self.preview_key, trajectories=trajectories, positions=[a]
            )
        edited = self.pipe.decode_latents(final)[0]
        if self.settings.masked:
            from .masks import composite

            edited = composite(self.anchor_frame, edited, self.alpha_at(a))
        return AnchorPreview(
            source=self.anchor_frame,
            edited=edited,
            frame_index=self.anchor_index,
            source_prompt=self.source_prompt,
            captioned=self.captioned,
            unet_evaluations=self.pipe.unet_evaluations - evaluations,
            seconds=time.perf_counter() - tic,
        )

    def run(self) -> EditResult:
        """The whole selection, written to the output path."""
        self.prepare()
        s, reader, num_frames = self.settings, self.reader, self.num_frames
        result = EditResult(
            output=str(self.output),
            frames=num_frames,
            frame_indices=list(reader.indices),
            size=(self.width, self.height),
            output_size=(self.width, self.height),
            fps=reader.fps,
            has_audio=False,
            source_prompt=self.source_prompt,
            captioned=self.captioned,
            device=self.device_name,
            dtype=self.dtype_name,
            steps=s.steps,
            cache_enabled=self.cache.enabled,
            latents_dir=str(self.latents_dir) if self.latents_dir else None,
            seconds=self.seconds,
            masked=s.masked,
            mask_coverage=self.mask_coverage if s.masked else 1.0,
        )
        final = self._load_checked("final", self.edit_key, (num_frames, *self.latent_shape))
        inverted = None
        if final is None or self.latents_dir is not None:
            depth, inverted, trajectories = self.depth_and_inversion(
                list(range(num_frames)), result
            )
        tic = time.perf_counter()
        if final is None:
            final = self.edit_latents(depth, inverted, self.edit_key, result, trajectories)
        else:
            result.editing = "cached"
        self.seconds["editing"] = time.perf_counter() - tic

        tic = time.perf_counter()
        if self.latents_dir is not None:
            save_latents(self.latents_dir, reader.indices, inverted, final)
        self._write(final, result)
        self.seconds["writing"] = time.perf_counter() - tic
        self.seconds["total"] = time.perf_counter() - self._started
        result.peak_frames_held = self.frames_held.peak
        if self.stats_path is not None:
            atomic_write_text(json.dumps(result.to_json(), indent=2) + "\n", self.stats_path)
        return result

    def _write(self, final, result: EditResult) -> None:
        """Decode and encode one frame at a time (a side-by-side output decodes the source again)."""
        from . import video

        s, reader, n = self.settings, self.reader, self.num_frames
        self.progress("writing", 0, n)
        sources = self._frames() if s.side_by_side or s.masked else None

        def output_frames() -> Iterator[np.ndarray]:
            from .masks import composite

            for i in range(n):
                self._check_cancelled()
                frame = self.frames_held.track(self.pipe.decode_latents(final[i : i + 1])[0])
                if s.keep_source_size:
                    frame = self.frames_held.track(
                        video.resize_frames([frame], reader.source_size)[0]
                    )
                if sources is not None:
                    _, source, small = next(sources)
                    if s.masked:  # outside the mask, the source pixels exactly
                        under = source if s.keep_source_size else small
                        frame = self.frames_held.track(composite(under, frame, self.alpha_at(i)))
                    if s.side_by_side:
                        frame = self.frames_held.track(video.side_by_side([source], [frame])[0])
                    del source, small
                if i == 0:
                    result.output_size = (frame.shape[1], frame.shape[0])
                self.progress("writing", i + 1, n)
                yield frame
                del frame

        container = video.VIDEO_EXTENSIONS.get(self.output.suffix.lower())
        with_audio = (
            reader.has_audio and not self.output.is_dir() and bool(container and container[2])
        )
        video.write_video(
            self.output,
            output_frames(),
            fps=reader.fps,
            audio_from=reader.source_path if with_audio else None,
            audio_start=reader.start_time,
            audio_end=reader.end_time,
        )
        result.has_audio = with_audio and video.probe(self.output)["has_audio"]

    # ------------------------------------------------------------------ cache helpers
    def _load_checked(self, kind: str, key: str, shape: tuple[int, ...]):
        """A cached tensor of the expected shape, or None."""
        import torch

        value = self.cache.load(kind, key)
        if not torch.is_tensor(value) or tuple(value.shape) != tuple(shape):
            return None
        return value.float()

    def _save(self, kind: str, key: str, value) -> bool:
        return save_to_cache(self.cache, kind, key, value, self.warn)


# --------------------------------------------------------------------------- helpers


def save_to_cache(cache, kind: str, key: str, value, warn: MessageCallback) -> bool:
    """Store in the cache; the first failure is reported once and caching stops."""
    if not cache.enabled:
        return False
    had_error = cache.write_error is not None
    if kind == "checkpoint":
        saved = cache.save_checkpoint(key, value)
    else:
        saved = cache.save(kind, key, value)
    if not saved and not had_error and cache.write_error is not None:
        warn(f"the cache cannot be written, going on without it: {cache.write_error}.")
    return saved


def caption_anchor(frame, captioner: str, device: str, cache, warn: MessageCallback) -> str:
    """The source prompt: BLIP's caption of the anchor frame (cached by frame and captioner)."""
    from .cache import hash_array, make_key, model_fingerprint
    from .caption import MAX_NEW_TOKENS, caption_frame

    key = make_key(
        "caption",
        captioner=model_fingerprint(captioner),
        frame=hash_array(frame),
        max_new_tokens=MAX_NEW_TOKENS,
    )
    text = cache.load("caption", key)
    if not isinstance(text, str):
        try:
            text = caption_frame(frame, captioner, device)
        except ModelNotAvailableError as exc:
            # models.py's hint about `tiny` concerns the diffusion model, not the captioner.
            message = str(exc).replace(" (or `tiny` for the bundled random-weight model)", "")
            raise ModelNotAvailableError(
                f"{message.rstrip('.')}; or pass --source-prompt to skip captioning."
            ) from exc
        if text.strip():
            save_to_cache(cache, "caption", key, text, warn)
    if not text.strip():
        raise InputError(
            f"The captioner '{captioner}' gave an empty caption for the anchor frame; "
            "describe the input with --source-prompt."
        )
    return text.strip()


def check_output_path(output: Path, input_path: Path | None = None) -> None:
    """Fail now, not after an hour of computing, when ``output`` cannot be written."""
    from .video import VIDEO_EXTENSIONS, check_reusable_folder

    folder_output = output.is_dir() or output.suffix == ""
    if not folder_output and output.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoError(
            f"Cannot write {output}: unknown output type '{output.suffix}'; use "
            f"{', '.join(VIDEO_EXTENSIONS)} or a folder name for PNG frames."
        )
    if folder_output and output.exists() and not output.is_dir():
        raise VideoError(f"Cannot write frames to {output}: a file of that name exists.")
    check_writable_folder(output.parent, output)
    if input_path is not None and output.exists() and input_path.exists():
        if output.resolve() == input_path.resolve():
            raise VideoError(f"The output {output} is the input; choose another output path.")
    if folder_output and output.is_dir():
        check_reusable_folder(output)


def check_latents_dir(path: Path) -> None:
    """``--save-latents`` must be new, or a folder an earlier ``--save-latents`` wrote."""
    check_writable_folder(path.parent, path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"Cannot save latents to {path}: a file of that name exists.")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in ("inverted", "final"))
        if foreign:
            raise InputError(
                f"Cannot save latents to {path}: it already contains other files (e.g. "
                f"{foreign[0]}); choose a new or empty folder."
            )


def check_writable_folder(folder: Path, target: Path) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.exists():
        raise VideoError(f"Cannot write {target}: the folder {folder} does not exist.")
    if not folder.is_dir():
        raise VideoError(f"Cannot write {target}: {folder} is not a folder.")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".pix2video-write-test-"):
            pass
    except OSError as exc:
        raise VideoError(
            f"Cannot write {target}: the folder {folder} is not writable ({exc.strerror or exc})."
        ) from exc


def save_latents(folder: Path, indices: list[int], inverted, final) -> None:
    """``folder/inverted/NNNNNN.npy`` (x_T) and ``folder/final/NNNNNN.npy``, atomically.

    NNNNNN is the frame's index in the input (source frame number of a video, position in
    the sorted folder of an image sequence); each array is float32 (1, 4, H/8, W/8).
    """
    import numpy as np

    try:
        with atomic_path(folder, directory=True) as tmp:
            for sub, latents in (("inverted", inverted), ("final", final)):
                (tmp / sub).mkdir()
                for index, latent in zip(indices, latents, strict=True):
                    array = latent[None].detach().cpu().float().numpy().astype(np.float32)
                    np.save(tmp / sub / f"{index:06d}.npy", array)
    except OSError as exc:
        raise InputError(f"Cannot save latents to {folder} ({exc.strerror or exc}).") from exc


def frame_names(reader, num_frames: int) -> list[str]:
    """Per selected frame, the name its depth map carries: image stem, or the source index."""
    indices = [reader.start_index + i * reader.stride for i in range(num_frames)]
    if reader.source_path.is_dir():
        from .video import list_image_files

        files = list_image_files(reader.source_path)
        return [files[i].name for i in indices]
    return [f"{i:06d}" for i in indices]


@functools.lru_cache(maxsize=1)
def load_depth_estimator(model: str, device: str):
    """The depth model of `--control depth` (kept loaded between jobs)."""
    from .control import DepthEstimator

    return DepthEstimator(model, device)


@functools.lru_cache(maxsize=1)
def load_segmenter(model: str, device: str):
    """The text-to-mask model (kept loaded between jobs, like the captioner)."""
    from .masks import TextSegmenter

    return TextSegmenter(model, device)


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from the settings; reduced precision only on a GPU."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"Unknown --device {device!r}; use auto, cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} was asked for but no CUDA GPU is available.")
    if resolved.type == "cuda" and resolved.index is not None:
        if resolved.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: there are only {torch.cuda.device_count()} CUDA GPUs."
            )
    if dtype != "float32" and resolved.type == "cpu":
        raise InputError(f"--dtype {dtype} needs a GPU; on the CPU use float32.")
    return resolved, getattr(torch, dtype)


def _feature_store_dtype(name: str, pipe):
    """float16 halves the injected features' memory; float32 keeps them as computed."""
    import torch

    if name == "float16" and pipe.unet.dtype != torch.float16:
        return torch.float16
    return None
