"""The `pix2video` command line.

    pix2video edit INPUT -p "edit prompt" -o OUTPUT [options]

`main` is a click group; every subcommand is an ``@main.command()`` function that uses the
shared option helpers (`model_options`: --model/--device/--dtype; `run_options`:
--cache-dir/--no-cache/--config/--quiet/--debug) and gets the same error handling from
`Pix2VideoGroup`: a `Pix2VideoError` or a usage error is one sentence on stderr and exit
code 2 (``--debug`` adds the traceback), Ctrl-C exits 130. A new subcommand::

    @main.command(context_settings={"show_default": True})
    @click.argument("input", type=click.Path())
    @model_options
    @run_options
    def ablate(input, model, device, dtype, cache_dir, no_cache, quiet, debug): ...

``--config`` works for it too (top-level keys, or a table named after the command).

The work of ``edit`` lives in `run_edit(EditOptions) -> EditResult`, which tests and other
code can call in-process. It reads the clip, resizes it, captions the anchor frame when no
source prompt is given, then runs depth -> inversion -> editing with every stage cached on
disk (`cache.py`), so an interrupted run resumes and a new prompt reuses the inversion.
Heavy libraries (torch, diffusers) are imported only when a command runs, so ``--help`` is
instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import platformdirs

from . import __version__
from .atomic import atomic_path, atomic_write_text
from .caption import DEFAULT_CAPTIONER
from .errors import InputError, Pix2VideoError, VideoError
from .models import DEFAULT_CLIP_MODEL, DEFAULT_MODEL

ATTEND_CHOICES = ("anchor+previous", "anchor", "previous", "anchor+random", "none")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_CACHE_DIR = str(platformdirs.user_cache_path("pix2video"))
INTERRUPTED = "Interrupted; finished work is cached, re-run the same command to resume."
INTERRUPTED_NO_CACHE = "Interrupted; nothing was kept (--no-cache)."


# =========================================================================== the edit job


@dataclass
class EditOptions:
    """Everything `pix2video edit` takes; the defaults are the command line's defaults."""

    input: str | os.PathLike
    prompt: str
    output: str | os.PathLike
    source_prompt: str | None = None
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    size: str | int = "512"
    keep_source_size: bool = False
    start: str | None = None
    end: str | None = None
    stride: int = 1
    max_frames: int | None = None
    depth_dir: str | os.PathLike | None = None
    steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    attend: str = "anchor+previous"
    anchor: str = "first"
    latent_guidance_weight: float = 100.0
    latent_guidance_steps: int | None = None
    latent_guidance_target: str = "same-step"
    feature_store_dtype: str = "float32"
    offload_features: bool = False
    vae_tiling: bool = False
    save_latents: str | os.PathLike | None = None
    side_by_side: bool = False
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
    no_cache: bool = False
    captioner: str = DEFAULT_CAPTIONER
    stats_json: str | os.PathLike | None = None


@dataclass
class EditResult:
    """What `run_edit` did: where the output went, what it cost, what came from the cache."""

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
    cache_enabled: bool = True
    latents_dir: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def unet_evaluations(self) -> int:
        return self.unet_evaluations_inversion + self.unet_evaluations_editing

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet_evaluations"] = self.unet_evaluations
        return data


class Reporter:
    """Progress bars (rich, on stderr) and messages; silent when ``quiet``.

    `update(stage, done, total)` has the signature of the pipeline's ``progress`` callback.
    """

    UNITS = {
        "depth": "frames",
        "inversion": "frames",
        "editing": "frame-steps",
        "ablation": "variants",
    }

    def __init__(self, quiet: bool = False, debug: bool = False) -> None:
        self.quiet = quiet
        self.debug = debug  # leave the libraries' own logging and progress bars on
        self._progress = None
        self._tasks: dict[str, Any] = {}

    def info(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def warn(self, message: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(f"Warning: {message}", markup=False, highlight=False)
        else:
            click.echo(f"Warning: {message}", err=True)

    @contextlib.contextmanager
    def live(self) -> Iterator[Reporter]:
        """Show progress bars while the block runs."""
        if self.quiet:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress = progress
        try:
            with progress:
                yield self
        finally:
            self._progress = None
            self._tasks.clear()

    def start(self, stage: str, total: int, completed: int = 0) -> None:
        """Open a bar; ``completed`` work (cached, resumed) does not count towards the ETA."""
        if self._progress is None:
            return
        if stage in self._tasks:
            self._progress.update(self._tasks[stage], total=total, completed=completed)
            return
        self._tasks[stage] = self._progress.add_task(
            stage, total=total, completed=completed, unit=self.UNITS.get(stage, "frames")
        )

    def update(self, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if stage not in self._tasks:
            self.start(stage, total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def run_edit(options: EditOptions, reporter: Reporter | None = None) -> EditResult:
    """Edit a clip as `pix2video edit` does; raises `Pix2VideoError` on anything a user can fix.

    Order: cheap checks (options, output folder, input) first, then the model, the prompts
    (a too-long prompt fails before any computation), the source caption, depth,
    inversion, editing, decoding and writing.
    """
    from . import video
    from .guidance import latent_guidance_schedule

    reporter = reporter or Reporter(quiet=True)
    o = options
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    # ---------------------------------------------------------------- cheap checks
    size_spec = video.parse_size(o.size)
    target_of = latent_guidance_schedule(
        o.steps, o.latent_guidance_weight, o.latent_guidance_steps, o.latent_guidance_target
    )
    if o.feature_store_dtype not in ("float32", "float16"):
        raise InputError(
            f"--feature-store-dtype must be float32 or float16, got {o.feature_store_dtype!r}."
        )
    input_path = Path(o.input).expanduser()
    output = Path(o.output).expanduser()
    check_output_path(output, input_path)
    latents_dir = Path(o.save_latents).expanduser() if o.save_latents else None
    if latents_dir is not None:
        check_latents_dir(latents_dir)
    stats_path = Path(o.stats_json).expanduser() if o.stats_json else None
    if stats_path is not None:
        _check_writable_folder(stats_path.parent, stats_path)
    depth_dir = Path(o.depth_dir).expanduser() if o.depth_dir else None
    if depth_dir is not None and not depth_dir.is_dir():
        raise InputError(f"The depth folder '{depth_dir}' does not exist.")

    # ---------------------------------------------------------------- input
    tic = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip = video.read_clip(input_path, o.start, o.end, o.stride, o.max_frames)
    for warning in caught:
        if issubclass(warning.category, UserWarning) and str(input_path) in str(warning.message):
            reporter.warn(str(warning.message))
    width, height = video.fit_size(*clip.source_size, size_spec)
    frames = video.resize_frames(clip.frames, (width, height))
    num_frames = len(frames)
    anchor_position = 0 if o.anchor == "first" else num_frames - 1
    anchor_source = clip.frames[anchor_position]  # captioned at full resolution
    if not o.side_by_side:
        clip.frames = []  # only the resized frames are needed from here on
    names = frame_names(clip)
    raw_depth = None
    depth_sources = ["estimator"] * num_frames
    if depth_dir is not None:
        from .depth import load_depth_maps

        raw_depth = load_depth_maps(depth_dir, names, clip.source_size)
        depth_sources = [_hash_file(depth_dir / f"{Path(n).stem}.npy") for n in names]
    seconds["reading"] = time.perf_counter() - tic
    device, dtype = resolve_device(o.device, o.dtype)  # imports torch: after the cheap checks

    # ---------------------------------------------------------------- model and prompts
    import numpy as np
    import torch

    from .cache import Cache, hash_array, make_key, model_fingerprint
    from .guidance import needs_frame_major
    from .pipeline import load_pipeline

    if not reporter.debug:
        silence_libraries()
    tic = time.perf_counter()
    pipe = load_pipeline(o.model, device, dtype)
    if o.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.check_inputs(frames, o.attend, o.anchor, o.steps)
    edit_embedding = pipe.encode_prompt(o.prompt)
    negative_embedding = pipe.encode_prompt(o.negative_prompt)
    seconds["loading"] = time.perf_counter() - tic
    torch.manual_seed(o.seed)

    cache = Cache(None if o.no_cache else o.cache_dir)
    model_id = model_fingerprint(o.model)
    compute = {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "vae_tiling": o.vae_tiling,
    }

    tic = time.perf_counter()
    source_prompt, captioned = o.source_prompt, False
    if source_prompt is None:
        source_prompt = _caption_anchor(anchor_source, o.captioner, str(device), cache, reporter)
        captioned = True
        reporter.info(
            f'Source prompt (caption of frame {clip.indices[anchor_position]}): "{source_prompt}"'
        )
    try:
        source_embedding = pipe.encode_prompt(source_prompt)
    except InputError as exc:
        if not captioned:
            raise
        raise InputError(
            f"The caption {source_prompt[:40]!r}... is too long for the text encoder; "
            "pass a shorter --source-prompt."
        ) from exc
    seconds["caption"] = time.perf_counter() - tic

    # ---------------------------------------------------------------- cache keys
    latent_shape = (4, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    guided = len(target_of)
    step_major = num_frames == 1 or not needs_frame_major(target_of)
    frame_hashes = [hash_array(f) for f in frames]
    depth_keys = [
        make_key("depth", model=model_id, compute=compute, frame=h, size=[width, height], depth=d)
        for h, d in zip(frame_hashes, depth_sources, strict=True)
    ]
    inversion_keys = [
        make_key(
            "inversion",
            model=model_id,
            compute=compute,
            frame=h,
            size=[width, height],
            steps=o.steps,
            source_prompt=source_prompt,
            depth=d,
        )
        for h, d in zip(frame_hashes, depth_keys, strict=True)
    ]
    edit_key = make_key(
        "edit",
        model=model_id,
        compute=compute,
        inversions=inversion_keys,
        prompt=o.prompt,
        negative_prompt=o.negative_prompt,
        steps=o.steps,
        guidance_scale=float(o.guidance_scale),
        attend=o.attend,
        anchor=o.anchor,
        seed=o.seed,
        latent_guidance_weight=float(o.latent_guidance_weight) if guided else 0.0,
        latent_guidance_steps=guided,
        latent_guidance_target=o.latent_guidance_target if guided else None,
        feature_store_dtype=o.feature_store_dtype,
    )

    result = EditResult(
        output=str(output),
        frames=num_frames,
        frame_indices=list(clip.indices),
        size=(width, height),
        output_size=(width, height),
        fps=clip.fps,
        has_audio=False,
        source_prompt=source_prompt,
        captioned=captioned,
        device=str(device),
        dtype=compute["dtype"],
        steps=o.steps,
        cache_enabled=cache.enabled,
        latents_dir=str(latents_dir) if latents_dir else None,
        seconds=seconds,
    )

    final = _load_checked(cache, "final", edit_key, (num_frames, *latent_shape))
    with reporter.live():
        inverted = None
        if final is None or latents_dir is not None:
            # ---------------------------------------------------------- depth
            tic = time.perf_counter()

            def compute_depth(i: int):
                maps = None if raw_depth is None else raw_depth[i : i + 1]
                return pipe.prepare_depth([frames[i]], maps)

            depth, result.depth_cached, result.depth_computed = _per_frame(
                "depth", depth_keys, (1, 1, *latent_shape[1:]), compute_depth, cache, reporter
            )
            seconds["depth"] = time.perf_counter() - tic

            # ---------------------------------------------------------- inversion
            # one frame at a time, each stored as soon as it is done: a killed run keeps them
            tic = time.perf_counter()
            evaluations = pipe.unet_evaluations

            def compute_inversion(i: int):
                latent = pipe.encode_frames([frames[i]])
                frame_depth = depth[i : i + 1].to(pipe.device)
                return pipe.invert(latent, frame_depth, source_embedding, o.steps)

            inverted, result.inversion_cached, result.inversion_computed = _per_frame(
                "inversion", inversion_keys, (1, *latent_shape), compute_inversion, cache, reporter
            )
            result.unet_evaluations_inversion = pipe.unet_evaluations - evaluations
            seconds["inversion"] = time.perf_counter() - tic

        # -------------------------------------------------------------- editing
        tic = time.perf_counter()
        if final is None:
            order = list(range(num_frames))[:: -1 if o.anchor == "last" else 1]
            resume = None
            if step_major and cache.enabled:
                resume = cache.load_checkpoint(edit_key, num_frames, o.steps)
                if resume is not None and tuple(resume.latents.shape[1:]) != latent_shape:
                    resume = None
            total = num_frames * o.steps
            if resume is not None:
                result.editing = "resumed"
                result.resumed_from_step = resume.step
            reporter.start(
                "editing", total, 0 if resume is None else (resume.step + 1) * num_frames
            )

            def on_step_end(checkpoint) -> None:
                t0 = time.perf_counter()
                if _save(cache, "checkpoint", edit_key, checkpoint, reporter):
                    result.checkpoints_saved += 1
                result.checkpoint_seconds += time.perf_counter() - t0

            evaluations = pipe.unet_evaluations
            edited, _store = pipe.edit(
                inverted[order].to(pipe.device),
                depth[order].to(pipe.device),
                edit_embedding,
                negative_embedding,
                num_inference_steps=o.steps,
                guidance_scale=o.guidance_scale,
                attend=o.attend,
                latent_guidance_weight=o.latent_guidance_weight,
                latent_guidance_steps=o.latent_guidance_steps,
                latent_guidance_target=o.latent_guidance_target,
                seed=o.seed,
                feature_store_dtype=_feature_store_dtype(o.feature_store_dtype, pipe),
                feature_store_device="cpu" if o.offload_features else None,
                progress=reporter.update,
                resume=resume,
                on_step_end=on_step_end if step_major and cache.enabled else None,
            )
            result.unet_evaluations_editing = pipe.unet_evaluations - evaluations
            final = edited[torch.as_tensor(np.argsort(order))].float().cpu()
            if _save(cache, "final", edit_key, final, reporter):
                cache.remove("checkpoint", edit_key)
        else:
            result.editing = "cached"
        seconds["editing"] = time.perf_counter() - tic

        # -------------------------------------------------------------- outputs
        tic = time.perf_counter()
        if latents_dir is not None:
            save_latents(latents_dir, clip.indices, inverted, final)
        reporter.start("writing", num_frames)

        def output_frames() -> Iterator[np.ndarray]:
            for i in range(num_frames):
                frame = pipe.decode_latents(final[i : i + 1])[0]
                if o.keep_source_size:
                    frame = video.resize_frames([frame], clip.source_size)[0]
                if o.side_by_side:
                    frame = video.side_by_side([clip.frames[i]], [frame])[0]
                if i == 0:
                    result.output_size = (frame.shape[1], frame.shape[0])
                reporter.update("writing", i + 1, num_frames)
                yield frame

        container = video.VIDEO_EXTENSIONS.get(output.suffix.lower())
        with_audio = clip.has_audio and not output.is_dir() and bool(container and container[2])
        video.write_video(
            output,
            output_frames(),
            fps=clip.fps,
            audio_from=clip.source_path if with_audio else None,
            audio_start=clip.start_time,
            audio_end=clip.end_time,
        )
        result.has_audio = with_audio and video.probe(output)["has_audio"]
        seconds["writing"] = time.perf_counter() - tic

    seconds["total"] = time.perf_counter() - started
    if stats_path is not None:
        atomic_write_text(json.dumps(result.to_json(), indent=2) + "\n", stats_path)
    return result


# --------------------------------------------------------------------------- job helpers


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
    _check_writable_folder(output.parent, output)
    if input_path is not None and output.exists() and input_path.exists():
        if output.resolve() == input_path.resolve():
            raise VideoError(f"The output {output} is the input; choose another output path.")
    if folder_output and output.is_dir():
        check_reusable_folder(output)


def check_latents_dir(path: Path) -> None:
    """``--save-latents`` must be new, or a folder an earlier ``--save-latents`` wrote."""
    _check_writable_folder(path.parent, path)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"Cannot save latents to {path}: a file of that name exists.")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in ("inverted", "final"))
        if foreign:
            raise InputError(
                f"Cannot save latents to {path}: it already contains other files (e.g. "
                f"{foreign[0]}); choose a new or empty folder."
            )


def _check_writable_folder(folder: Path, target: Path) -> None:
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


def frame_names(clip) -> list[str]:
    """Per selected frame, the name its depth map carries: image stem, or the source index."""
    if clip.source_path.is_dir():
        from .video import list_image_files

        files = list_image_files(clip.source_path)
        return [files[i].name for i in clip.indices]
    return [f"{i:06d}" for i in clip.indices]


def resolve_device(device: str, dtype: str):
    """(torch.device, torch.dtype) from the options; reduced precision only on a GPU."""
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


def _hash_file(path: Path) -> str:
    from .cache import hash_file

    return hash_file(path)


def _load_checked(cache, kind: str, key: str, shape: tuple[int, ...]):
    """A cached tensor of the expected shape, or None."""
    import torch

    value = cache.load(kind, key)
    if not torch.is_tensor(value) or tuple(value.shape) != tuple(shape):
        return None
    return value.float()


def _per_frame(stage: str, keys: list[str], shape, compute, cache, reporter: Reporter):
    """Per frame: the cached tensor, or ``compute(i)`` stored at once; (stacked, hits, misses)."""
    import torch

    values, hits = [], 0
    reporter.start(stage, len(keys))
    for i, key in enumerate(keys):
        value = _load_checked(cache, stage, key, shape)
        if value is None:
            value = compute(i).float().cpu()
            _save(cache, stage, key, value, reporter)
        else:
            hits += 1
        values.append(value)
        reporter.update(stage, i + 1, len(keys))
    return torch.cat(values), hits, len(keys) - hits


def _save(cache, kind: str, key: str, value, reporter: Reporter) -> bool:
    """Store in the cache; the first failure is reported once and caching stops."""
    if not cache.enabled:
        return False
    had_error = cache.write_error is not None
    if kind == "checkpoint":
        saved = cache.save_checkpoint(key, value)
    else:
        saved = cache.save(kind, key, value)
    if not saved and not had_error and cache.write_error is not None:
        reporter.warn(f"the cache cannot be written, going on without it: {cache.write_error}.")
    return saved


def _caption_anchor(frame, captioner: str, device: str, cache, reporter: Reporter) -> str:
    """The source prompt: BLIP's caption of the anchor frame (cached by frame and captioner)."""
    from .cache import hash_array, make_key, model_fingerprint
    from .caption import MAX_NEW_TOKENS, caption_frame
    from .errors import ModelNotAvailableError

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
            _save(cache, "caption", key, text, reporter)
    if not text.strip():
        raise InputError(
            f"The captioner '{captioner}' gave an empty caption for the anchor frame; "
            "describe the input with --source-prompt."
        )
    return text.strip()


def format_summary(result: EditResult) -> list[str]:
    """The closing lines of `pix2video edit`."""
    n = result.frames
    total = result.seconds.get("total", 0.0)
    w, h = result.size
    lines = [
        f"Edited {n} frame{'s' if n != 1 else ''} at {w}x{h} in {total:.1f} s "
        f"({total / n:.2f} s per frame; {result.unet_evaluations / n:g} UNet evaluations per "
        f"frame: inversion {result.unet_evaluations_inversion / n:g}, editing "
        f"{result.unet_evaluations_editing / n:g}).",
    ]
    if result.captioned:
        lines.append(f'Source prompt (BLIP caption): "{result.source_prompt}"')
    if result.cache_enabled:
        if result.editing == "cached":
            editing = "cached (final latents)"
        elif result.editing == "resumed":
            editing = f"resumed after step {result.resumed_from_step + 1} of {result.steps}"
        else:
            editing = "computed"
        inversion = (
            f"inversion: {result.inversion_cached} cached, {result.inversion_computed} computed"
            if result.editing != "cached" or result.latents_dir
            else "inversion: not needed"
        )
        lines.append(
            f"Cache: depth: {result.depth_cached} cached, {result.depth_computed} computed; "
            f"{inversion}; editing: {editing}."
        )
    else:
        lines.append("Cache: off (--no-cache).")
    ow, oh = result.output_size
    audio = ", with audio" if result.has_audio else ""
    lines.append(f"Wrote {result.output} ({n} frames, {ow}x{oh}, {result.fps:g} fps{audio}).")
    if result.latents_dir:
        lines.append(f"Saved latents to {result.latents_dir}/inverted and /final.")
    return lines


# =========================================================================== click plumbing


class _State:
    """Per-invocation flags the error handler needs after the command's context is gone."""

    debug = False
    interrupted_message = INTERRUPTED


_STATE = _State()


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Interrupted(click.ClickException):
    exit_code = 130


class Pix2VideoGroup(click.Group):
    """A click group whose errors are one line on stderr (plus the traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # before click turns it into a bare "Aborted!"
            raise _Interrupted(_STATE.interrupted_message) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _STATE.debug = False
        _STATE.interrupted_message = INTERRUPTED
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _Interrupted as exc:
            _fail(exc.message, 130, exc, prefix="")
        except click.exceptions.Abort as exc:
            _fail(_STATE.interrupted_message, 130, exc, prefix="")
        except _NO_ARGS_IS_HELP as exc:  # bare `pix2video`: the help, not an error line
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = exc.format_message().rstrip(".")
            context = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and context is not None:
                message += f" (see '{context.command_path} --help')"
            _fail(f"{message}.", exc.exit_code, exc)
        except Pix2VideoError as exc:
            _fail(str(exc), exc.exit_code, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or an environment problem
            _fail(_unexpected(exc), 1, exc)
        sys.exit(rv if isinstance(rv, int) else 0)


def _unexpected(exc: BaseException) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return (
            "Out of GPU memory; try --dtype float16, --feature-store-dtype float16, a smaller "
            "--size or fewer frames."
        )
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"Unexpected {name}: {first} (re-run with --debug for the traceback)."


def _fail(message: str, code: int, exc: BaseException, prefix: str = "Error: ") -> None:
    if _STATE.debug:
        traceback.print_exception(exc)
    click.echo(f"{prefix}{message}", err=True)
    sys.exit(code)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    _STATE.debug = bool(value)
    return value


def quiet_libraries(debug: bool) -> contextlib.AbstractContextManager:
    """Within the block, library warnings are hidden (not with --debug); see `silence_libraries`."""
    stack = contextlib.ExitStack()
    if debug:
        return stack
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    silence_libraries()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def silence_libraries() -> None:
    """diffusers / transformers / huggingface_hub: errors only and no progress bars.

    Only libraries already imported are configured (importing diffusers takes seconds, and
    a command that fails on its input should fail at once); `run_edit` calls this again
    once it has imported the pipeline.
    """
    if "diffusers" in sys.modules:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    if "transformers" in sys.modules:
        import transformers.utils.logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


# --------------------------------------------------------------------------- config files


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) file as a dict (other suffixes: tried as YAML)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"The config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError as exc:
                raise InputError(
                    f"Reading {path} needs Python 3.11+ or the tomli package; or use YAML."
                ) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"The config file {path} is not valid TOML ({exc}).") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise InputError(f"The config file {path} is not valid YAML ({reason}).") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"The config file {path} must hold option: value pairs.")
    return data


def _apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback of --config: the file's values become this command's defaults.

    Keys are option names with - or _ (``guidance-scale`` or ``guidance_scale``); a table
    named after the command (``[edit]`` / ``edit:``) overrides top-level keys, tables for
    other commands are ignored, so one file can serve several subcommands. Options given
    on the command line override the file.
    """
    if value is None or ctx.resilient_parsing:
        return value
    data = read_config(value)
    known = {p.name for p in ctx.command.params if p.name and p.name != "config"}
    # top-level tables are sections of commands (this one's is merged below; others' skipped)
    merged = {str(k): v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(ctx.info_name)
    if isinstance(section, dict):
        merged.update({str(k): v for k, v in section.items()})
    values = {}
    for key, item in merged.items():
        name = key.strip().lstrip("-").replace("-", "_")
        if name not in known:
            raise InputError(
                f"The config file {value} has an unknown key '{key}'; keys are the options of "
                f"'{ctx.command_path}' (see --help)."
            )
        values[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


# --------------------------------------------------------------------------- shared options


def _compose(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def model_options(f: Callable) -> Callable:
    """--model, --device, --dtype: which diffusion model runs where."""
    return _compose(
        click.option(
            "--model",
            default=DEFAULT_MODEL,
            help="Depth-conditioned Stable Diffusion 2 checkpoint: hub id (used offline when "
            "cached) or local folder; 'tiny' = the bundled random-weight model for smoke runs.",
        ),
        click.option(
            "--device",
            default="auto",
            help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default="float32",
            help="Model precision; float16/bfloat16 only on a GPU (about half the memory).",
        ),
    )(f)


def run_options(f: Callable) -> Callable:
    """--cache-dir, --no-cache, --config, --quiet, --debug: how a command runs."""
    return _compose(
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            default=DEFAULT_CACHE_DIR,
            envvar="PIX2VIDEO_CACHE_DIR",
            show_envvar=True,
            help="Where depth, inversions, editing checkpoints and final latents are cached "
            "(keyed by content hashes; safe to delete).",
        ),
        click.option(
            "--no-cache",
            is_flag=True,
            help="Neither read nor write the cache (no resume after an interruption).",
        ),
        click.option(
            "--config",
            type=click.Path(dir_okay=False),
            is_eager=True,
            show_default="none",
            expose_value=False,
            callback=_apply_config,
            help="YAML or TOML file of option values (keys: option names, with - or _); "
            "options on the command line override it.",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary."),
        click.option(
            "--debug",
            is_flag=True,
            callback=_set_debug,
            help="Full tracebacks, and the libraries' own logs and warnings.",
        ),
    )(f)


def selection_options(f: Callable) -> Callable:
    """--start, --end, --stride, --max-frames: which frames of a clip are used."""
    return _compose(
        click.option(
            "--start",
            default=None,
            show_default="first frame",
            help="First frame: frame number (12), seconds (2.5, 2.5s) or clock time (1:02.5).",
        ),
        click.option(
            "--end",
            default=None,
            show_default="end of the clip",
            help="End (exclusive), same notation as --start.",
        ),
        click.option(
            "--stride", type=click.IntRange(min=1), default=1, help="Take every N-th frame."
        ),
        click.option(
            "--max-frames",
            type=click.IntRange(min=1),
            default=None,
            show_default="no limit",
            help="Use at most this many frames (after --stride).",
        ),
    )(f)


def size_option(f: Callable) -> Callable:
    """--size: processing resolution."""
    return click.option(
        "--size",
        default="512",
        help="Processing size: one number = the long side (aspect ratio kept), or WxH. Both "
        "sides must be multiples of 64 (rounded for a single number): the VAE latent is 8x "
        "smaller than the image and the UNet halves it three more times.",
    )(f)


# =========================================================================== commands


@click.group(
    cls=Pix2VideoGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="pix2video")
def main() -> None:
    """Pix2Video: text-guided video editing with depth-conditioned Stable Diffusion 2.

    Example: pix2video edit clip.mp4 -p "a swarovski crystal swan" -o edited.mp4
    """
    return_large_buffers_to_os()


MMAP_THRESHOLD = 16 << 20


def return_large_buffers_to_os() -> None:
    """Serve buffers over 16 MiB with mmap so that freeing them returns the memory at once.

    glibc raises its mmap threshold after large frees, after which the VAE's 32-128 MB
    activations come from the heap and stay there: measured on the tiny model, 8 frames at
    512x512, peak RSS 931 MB -> 741 MB with this (1 MiB and 16 MiB thresholds give the
    same peak; 16 MiB keeps the UNet's smaller buffers on the faster heap). No-op outside glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (fixed: no dynamic raising)
    except (OSError, AttributeError):
        pass


@main.command(context_settings={"show_default": True})
@click.argument("input", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Edit prompt: describes the result.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="Output: .mp4/.mov/.mkv (H.264), .webm (VP9), .gif, or a folder name for PNG frames; "
    "written atomically (never a partial file).",
)
@click.option(
    "--source-prompt",
    default=None,
    show_default="caption of the anchor frame",
    help="Describes the input; used for inversion. Omitted: the anchor frame is captioned "
    "with --captioner and the caption is printed.",
)
@click.option("--negative-prompt", default="", help="Unconditional prompt for guidance.")
@model_options
@size_option
@click.option(
    "--keep-source-size",
    is_flag=True,
    help="Resize the result back to the source resolution.",
)
@selection_options
@click.option(
    "--depth-dir",
    type=click.Path(),
    default=None,
    show_default="the model's depth estimator",
    help="Precomputed depth: one .npy per frame named like the frame (image folder: the "
    "image's stem, e.g. 000012.npy; video: the source frame index with 6 digits).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1, max=1000),
    default=50,
    help="DDIM steps (inversion and editing).",
)
@click.option("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance.")
@click.option(
    "--seed",
    type=int,
    default=0,
    help="Only --attend anchor+random draws random numbers; the edit is otherwise deterministic.",
)
@click.option(
    "--attend",
    type=click.Choice(ATTEND_CHOICES),
    default="anchor+previous",
    help="Frames whose features the decoder self-attention reads (the paper: "
    "anchor+previous; others are its ablations; none = independent per-frame edits).",
)
@click.option(
    "--anchor",
    type=click.Choice(("first", "last")),
    default="first",
    help="Anchor frame; last processes the clip from its end.",
)
@click.option(
    "--latent-guidance-weight",
    type=click.FloatRange(min=0),
    default=100.0,
    help="Weight of the guided latent update towards the previous frame (0 turns it off).",
)
@click.option(
    "--latent-guidance-steps",
    type=click.IntRange(min=0),
    default=None,
    show_default="steps//2+1",
    help="How many initial steps get the guided latent update.",
)
@click.option(
    "--latent-guidance-target",
    default="same-step",
    help="The previous frame's predicted clean latent at the same step ('same-step') or "
    "at step index K ('step:K'; needs frame-by-frame processing, so no mid-edit checkpoints).",
)
@click.option(
    "--feature-store-dtype",
    type=click.Choice(("float32", "float16")),
    default="float32",
    help="Precision of the stored features injected into later frames; float16 halves that "
    "memory (slight numeric change).",
)
@click.option(
    "--offload-features",
    is_flag=True,
    help="Keep the stored features in CPU memory while the model runs on a GPU (less GPU "
    "memory, some transfer time; same result).",
)
@click.option(
    "--vae-tiling",
    is_flag=True,
    help="Encode/decode large frames tile by tile (less memory at high resolution; tiles "
    "are blended, so pixels differ slightly).",
)
@click.option(
    "--save-latents",
    type=click.Path(),
    default=None,
    show_default="off",
    help="Also write DIR/inverted/NNNNNN.npy (x_T) and DIR/final/NNNNNN.npy (last latent "
    "before decoding), float32 (1, 4, H/8, W/8); NNNNNN = the frame's index in the input.",
)
@click.option(
    "--side-by-side",
    is_flag=True,
    help="Write source | edit next to each other.",
)
@click.option(
    "--captioner",
    default=DEFAULT_CAPTIONER,
    help="BLIP captioning model (hub id or folder) for the source prompt.",
)
@click.option(
    "--stats-json",
    type=click.Path(dir_okay=False),
    default=None,
    show_default="off",
    help="Write what the run did (frames, timings, UNet evaluations, cache hits) as JSON.",
)
@run_options
def edit(quiet: bool, debug: bool, **kwargs: Any) -> None:
    """Edit the video (or image folder) INPUT so that it shows PROMPT.

    Each frame is DDIM-inverted with the source prompt and its depth, then regenerated with
    the edit prompt; decoder self-attention reads the anchor and previous edited frames and
    a guided latent update keeps consecutive frames close (Pix2Video, ICCV 2023). Depth,
    inversions and editing checkpoints are cached: an interrupted run resumes, and a new
    prompt for the same clip skips inversion.

    Example: pix2video edit clip.mp4 -p "a swarovski crystal swan" -o edited.mp4
    """
    options = EditOptions(**kwargs)
    if options.no_cache:
        _STATE.interrupted_message = INTERRUPTED_NO_CACHE
    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug):
        result = run_edit(options, reporter)
    for line in format_summary(result):
        reporter.info(line)


# --------------------------------------------------------------------------- eval / ablate


def clip_model_option(f: Callable) -> Callable:
    return click.option(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        help="CLIP checkpoint for CLIP-Text/CLIP-Image (hub id or folder). ViT-L/14 is what "
        "recent video-editing papers report, so numbers compare with theirs.",
    )(f)


def report_file_option(flag: str, dest: str, what: str) -> Callable:
    """An optional output file of `eval` (off unless given)."""
    return click.option(
        flag,
        dest,
        type=click.Path(dir_okay=False),
        default=None,
        show_default="off",
        help=f"Write {what}.",
    )


def _read_frames(path: str, start, end, stride: int, max_frames: int | None):
    from . import video

    return video.read_clip(Path(path).expanduser(), start, end, stride, max_frames)


@main.command(name="eval", context_settings={"show_default": True})
@click.argument("edited", type=click.Path())
@click.option(
    "--source",
    required=True,
    type=click.Path(),
    help="The input video or frame folder the edit was made from.",
)
@click.option("-p", "--prompt", required=True, help="The edit prompt (for CLIP-Text).")
@selection_options
@clip_model_option
@click.option("--device", default="auto", help="Torch device for CLIP: auto, cpu, cuda, cuda:N.")
@report_file_option("--json", "json_path", "the metrics and per-frame values as JSON")
@report_file_option("--markdown", "markdown_path", "the metrics table as Markdown")
@report_file_option("--plot", "plot_path", "a PNG plot of the per-frame values")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the table.")
@click.option(
    "--debug", is_flag=True, callback=_set_debug, help="Full tracebacks and library logs."
)
def evaluate_command(
    edited,
    source,
    prompt,
    start,
    end,
    stride,
    max_frames,
    clip_model,
    device,
    json_path,
    markdown_path,
    plot_path,
    quiet,
    debug,
) -> None:
    """Measure an edit as the paper does: CLIP-Text, CLIP-Image and flow-warped PixelMSE.

    EDITED and SOURCE are videos or frame folders with the same number of frames (select the
    range you edited with --start/--end/--stride/--max-frames: they apply to SOURCE).
    CLIP-Text: mean cosine similarity of each edited frame with the prompt (edit fidelity).
    CLIP-Image: mean cosine similarity of consecutive edited frames (temporal coherence).
    PixelMSE: optical flow of the SOURCE warps edited frame t onto t+1; mean squared error
    against edited frame t+1, pixels in [0, 1] (lower = less flicker). The masked PixelMSE
    only counts pixels whose forward and backward flows agree (occlusions excluded).
    """
    import transformers  # noqa: F401 - imported first so that its loading bars can be silenced

    from .metrics import evaluate

    with quiet_libraries(debug):
        edited_clip = _read_frames(edited, None, None, 1, None)
        source_clip = _read_frames(source, start, end, stride, max_frames)
        device_, _ = resolve_device(device, "float32")
        report = evaluate(
            edited_clip.frames,
            source_clip.frames,
            prompt,
            clip_model=clip_model,
            device=str(device_),
        )
    if json_path:
        report.save_json(json_path)
    if markdown_path:
        report.save_markdown(markdown_path)
    if plot_path:
        report.plot(plot_path)
    if not quiet:
        click.echo(report.to_markdown())


@main.command(context_settings={"show_default": True})
@click.argument("input", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Edit prompt: describes the result.")
@click.option(
    "--source-prompt",
    default=None,
    show_default="caption of the first frame",
    help="Describes the input (used for inversion).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for ablation.md, ablation.json and contact_sheet.png.",
)
@click.option(
    "--variants",
    default=None,
    show_default="all",
    help="Comma-separated subset of the variants (see the list above).",
)
@model_options
@size_option
@selection_options
@click.option("--steps", type=click.IntRange(1, 1000), default=50, help="DDIM steps.")
@click.option("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance.")
@click.option("--seed", type=int, default=0, help="Seed (used by the anchor+random variant).")
@clip_model_option
@click.option("--captioner", default=DEFAULT_CAPTIONER, help="Captioning model (hub id or folder).")
@click.option(
    "--columns", type=click.IntRange(min=2), default=4, help="Frames per row in the contact sheet."
)
@click.option("--save-frames", is_flag=True, help="Also write every variant's frames as PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or table.")
@click.option(
    "--debug", is_flag=True, callback=_set_debug, help="Full tracebacks and library logs."
)
def ablate(
    input,
    prompt,
    source_prompt,
    output,
    variants,
    model,
    device,
    dtype,
    size,
    start,
    end,
    stride,
    max_frames,
    steps,
    guidance_scale,
    seed,
    clip_model,
    captioner,
    columns,
    save_frames,
    quiet,
    debug,
) -> None:
    """Run the paper's ablations on one clip with the same seed and settings, and compare them.

    Variants: per-frame editing without injection or latent update (SDEdit-like), anchor
    only, previous only, anchor + a random earlier frame, anchor + previous without the
    latent update, and the full method. Depth and inversion are computed once and shared.
    Writes a table (rows = variants, columns = CLIP-Text, CLIP-Image, PixelMSE, masked
    PixelMSE, seconds per frame) and a contact sheet (rows = variants, columns = frames).
    """
    from . import video
    from .ablation import run_ablation, save_ablation, select_variants

    chosen = select_variants([v.strip() for v in variants.split(",")] if variants else None)
    out_dir = Path(output).expanduser()
    _check_writable_folder(out_dir.parent if not out_dir.exists() else out_dir, out_dir)
    reporter = Reporter(quiet=quiet, debug=debug)
    with quiet_libraries(debug):
        clip = _read_frames(input, start, end, stride, max_frames)
        width, height = video.fit_size(*clip.source_size, video.parse_size(size))
        frames = video.resize_frames(clip.frames, (width, height))
        device_, dtype_ = resolve_device(device, dtype)
        from .metrics import ClipScorer
        from .pipeline import load_pipeline

        if not debug:
            silence_libraries()
        pipe = load_pipeline(model, device_, dtype_)
        scorer = ClipScorer(clip_model, device=str(device_))
        if source_prompt is None:
            from .caption import caption_frame

            source_prompt = caption_frame(clip.frames[0], captioner, str(device_))
            if not source_prompt:
                raise InputError(
                    f"The captioner '{captioner}' gave an empty caption; pass --source-prompt."
                )
            reporter.info(f"Source prompt (caption of the first frame): {source_prompt!r}")
        with reporter.live():
            rows = run_ablation(
                pipe,
                frames,
                prompt,
                source_prompt,
                variants=chosen,
                scorer=scorer,
                progress=reporter.update,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                seed=seed,
            )
        paths = save_ablation(rows, out_dir, frames, columns=columns, save_frames=save_frames)
    if not quiet:
        from .ablation import ablation_table

        click.echo(ablation_table(rows))
        click.echo(f"Wrote {paths['markdown']}, {paths['json']} and {paths['contact_sheet']}.")


if __name__ == "__main__":
    main()
