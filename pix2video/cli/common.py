"""What every `pix2video` command shares: error handling, progress, config files, options.

- `Pix2VideoGroup`: a `Pix2VideoError` or a usage error is one sentence on stderr and exit
  code 2 (``--debug`` adds the traceback), Ctrl-C exits 130, anything else is one line
  naming the unexpected error.
- `Reporter`: rich progress bars on stderr fed by the job's ``progress(stage, done, total)``.
- ``--config``: a YAML/TOML file whose keys become the command's option defaults.
- Option groups used by several commands: `model_options`, `backbone_options`, `run_options`,
  `selection_options`, `size_option`, `clip_model_option`, `report_file_option`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import InputError, Pix2VideoError, describe_failure
from ..job import STAGES
from ..models import DEFAULT_CLIP_MODEL, DEFAULT_DEPTH_MODEL
from ..quiet import quiet_libraries, silence_libraries  # noqa: F401 - used by the commands
from ..settings import (
    CONTROL_KINDS,
    DTYPES,
    MAX_CANNY_THRESHOLD,
    MAX_MASK_GROWTH,
    EditSettings,
)

DEFAULTS = EditSettings.defaults()
SD15_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # as in `checkpoints` (no torch here)
REFRESH_SECONDS = 0.2  # progress bars are redrawn at most this often
INTERRUPTED = "Interrupted; finished work is cached, re-run the same command to resume."
INTERRUPTED_NO_CACHE = "Interrupted; nothing was kept (--no-cache)."


class Reporter:
    """Progress bars (rich, on stderr) and messages; silent when ``quiet``.

    `update(stage, done, total)` has the signature of the pipeline's ``progress`` callback.
    """

    UNITS = {**STAGES, "ablation": "variants", "jobs": "jobs"}

    def __init__(self, quiet: bool = False, debug: bool = False) -> None:
        self.quiet = quiet
        self.debug = debug  # leave the libraries' own logging and progress bars on
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._last_refresh = 0.0

    def info(self, message: str) -> None:
        if not self.quiet:
            click.echo(message)

    def line(self, message: str) -> None:
        """A line above the bars while they are shown (on stdout otherwise)."""
        if self.quiet:
            return
        if self._progress is not None:  # not wrapped: one job, one line
            self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
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
            _CountColumn(MofNCompleteColumn()),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            # redrawn from `update`, not by rich's refresh thread: a second thread made glibc
            # keep frame buffers of long clips (see `use_one_malloc_arena`)
            auto_refresh=False,
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

    def close(self, *stages: str) -> None:
        """Remove these bars (a new job's stages then start from zero, ETA included)."""
        for stage in stages:
            task = self._tasks.pop(stage, None)
            if task is not None and self._progress is not None:
                self._progress.remove_task(task)

    def download(self, model: str, done: int, total: int) -> None:
        """A model's download (`hub.DownloadProgress`): a bar with sizes and speed."""
        if self._progress is None:
            return
        if model not in self._tasks:
            self._tasks[model] = self._progress.add_task(
                model, total=total, completed=done, unit="", bytes=True
            )
        self.update(model, done, total)

    @contextlib.contextmanager
    def downloads(self) -> Iterator[None]:
        """Within the block, model downloads show as bars (`download`)."""
        from ..hub import reporting_downloads

        with reporting_downloads(self.download if not self.quiet else None):
            yield

    def update(self, stage: str, done: int, total: int, unit: str | None = None) -> None:
        """Move a bar (opened at `done` if new); `unit` replaces the words after the counts."""
        if self._progress is None:
            return
        if stage not in self._tasks:  # work already done (cached, resumed) is not in the ETA
            self.start(stage, total, done)
        fields = {"unit": unit} if unit is not None else {}
        self._progress.update(self._tasks[stage], completed=done, total=total, **fields)
        now = time.monotonic()
        if now - self._last_refresh >= REFRESH_SECONDS or done == total:
            self._last_refresh = now
            self._progress.refresh()


def _CountColumn(counts):  # noqa: N802 - builds a rich column class lazily (rich loads late)
    """Done/total as counts (`counts`), or as sizes and speed for a download's bar."""
    from rich.progress import DownloadColumn, ProgressColumn, TransferSpeedColumn
    from rich.text import Text

    class CountColumn(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self.sizes, self.speed = DownloadColumn(), TransferSpeedColumn()

        def render(self, task) -> Text:
            if not task.fields.get("bytes"):
                return counts.render(task)
            return Text.assemble(self.sizes.render(task), " ", self.speed.render(task))

    return CountColumn()


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
    return describe_failure(exc, hint="re-run with --debug for the traceback")


def _fail(message: str, code: int, exc: BaseException, prefix: str = "Error: ") -> None:
    if _STATE.debug:
        traceback.print_exception(exc)
    click.echo(f"{prefix}{message}", err=True)
    sys.exit(code)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    _STATE.debug = bool(value)
    return value


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
            default=DEFAULTS["model"],
            help="Checkpoint: SD2-depth (hub id, used offline when cached, or folder; 'tiny' = "
            "the bundled random-weight model for smoke runs), or an SD 1.5- or SDXL-architecture "
            "model (hub id, folder, or one .safetensors/.ckpt file) with --controlnet.",
        ),
        click.option(
            "--device",
            default=DEFAULTS["device"],
            help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default=DEFAULTS["dtype"],
            help="Model precision. auto: float16 on a GPU, bfloat16 on a CPU that computes it "
            "natively (AVX512_BF16/AMX; ~2x faster, half the memory), float32 elsewhere; "
            "float16 only on a GPU. Scheduler and latents stay float32.",
        ),
    )(f)


def backbone_options(f: Callable) -> Callable:
    """--controlnet, --control, --control-scale, --lora, ...: bring your own model (`checkpoints`)."""
    return _compose(
        click.option(
            "--controlnet",
            multiple=True,
            show_default="none",
            help="ControlNet (hub id or folder) for an SD 1.5 or SDXL --model; repeat for several (their "
            "residuals add up).",
        ),
        click.option(
            "--control",
            multiple=True,
            show_default="none",
            help=f"What each --controlnet sees, in their order: {' or '.join(CONTROL_KINDS)} "
            "(computed per frame), or a folder/video of control frames (one per selected frame).",
        ),
        click.option(
            "--control-scale",
            type=float,
            multiple=True,
            show_default="1.0 each",
            help="Conditioning scale of each --controlnet, in their order.",
        ),
        click.option(
            "--canny-low",
            type=click.IntRange(0, MAX_CANNY_THRESHOLD),
            default=DEFAULTS["canny_low"],
            help="Lower Canny threshold of --control canny.",
        ),
        click.option(
            "--canny-high",
            type=click.IntRange(0, MAX_CANNY_THRESHOLD),
            default=DEFAULTS["canny_high"],
            help="Upper Canny threshold of --control canny.",
        ),
        click.option(
            "--depth-model",
            default=None,
            show_default=f"{DEFAULT_DEPTH_MODEL} for --control depth; SD2-depth: its own",
            help="Depth estimator (transformers, hub id or folder), e.g. "
            "depth-anything/Depth-Anything-V2-Small-hf; also replaces SD2-depth's own.",
        ),
        click.option(
            "--lora",
            multiple=True,
            show_default="none",
            help="LoRA as PATH_OR_ID[:SCALE] (a .safetensors file, folder or hub id; scale 1.0 "
            "by default); repeatable. Fused into the weights.",
        ),
        click.option(
            "--model-config",
            default=None,
            show_default=f"{SD15_CONFIG} from the local cache",
            help="Diffusers configs (folder or hub id) of a single-file --model's architecture.",
        ),
    )(f)


def run_options(f: Callable) -> Callable:
    """--cache-dir, --no-cache, --config, --quiet, --debug: how a command runs."""
    return _compose(
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False),
            default=DEFAULTS["cache_dir"],
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
            "--stride",
            type=click.IntRange(min=1),
            default=DEFAULTS["stride"],
            help="Take every N-th frame.",
        ),
        click.option(
            "--max-frames",
            type=click.IntRange(min=1),
            default=None,
            show_default="no limit",
            help="Use at most this many frames (after --stride).",
        ),
    )(f)


def mask_options(f: Callable) -> Callable:
    """--mask, --mask-prompt and how masks are made: local edits (`pix2video.pipelines.masks`)."""
    return _compose(
        click.option(
            "--mask",
            type=click.Path(),
            default=None,
            show_default="none: edit the whole frame",
            help="Local edit: edit only where the mask is white, keep every other pixel. A "
            "folder of images or a video with one mask per selected frame, or one image for "
            "all frames; resized to the frames.",
        ),
        click.option(
            "--mask-prompt",
            default=None,
            show_default="none",
            help="Local edit: segment this text in every frame ('the swan') with --mask-model "
            "and edit only there.",
        ),
        click.option(
            "--mask-model",
            default=DEFAULTS["mask_model"],
            help="CLIPSeg segmentation model for --mask-prompt (hub id, used offline when "
            "cached, or folder).",
        ),
        click.option(
            "--mask-threshold",
            type=click.FloatRange(0, 1),
            default=DEFAULTS["mask_threshold"],
            help="Segmentation probability at or above which a pixel is in the --mask-prompt mask.",
        ),
        click.option(
            "--mask-dilate",
            type=click.IntRange(0, MAX_MASK_GROWTH),
            default=DEFAULTS["mask_dilate"],
            help="Grow the mask by this many pixels.",
        ),
        click.option(
            "--mask-feather",
            type=click.IntRange(0, MAX_MASK_GROWTH),
            default=DEFAULTS["mask_feather"],
            help="Fade the edit into the source over this many pixels beyond the grown mask; "
            "pixels farther away are the source's exactly.",
        ),
        click.option(
            "--save-masks",
            type=click.Path(),
            default=None,
            show_default="off",
            help="Write the masks used (grown and feathered; grey = partly edited) as PNGs, "
            "named like --depth-dir files.",
        ),
    )(f)


def size_option(f: Callable) -> Callable:
    """--size: processing resolution."""
    return click.option(
        "--size",
        default=DEFAULTS["size"],
        help="Processing size: one number = the long side (aspect ratio kept, 1280x720 at 512 "
        "gives 512x288), or WxH, or auto (long side 1024 for SDXL models, 512 for others). "
        "Both sides must be multiples of 8, the VAE's latent grid (rounded for a single number).",
    )(f)


MALLOC_ARENAS = 1


def use_one_malloc_arena() -> None:
    """Keep glibc from spreading a long clip's frame buffers over arenas it never gives back.

    One malloc arena: with a second thread running (a server's workers, formerly the progress
    display's refresher) glibc spread the main thread's frame-sized buffers over several
    arenas; a 200-frame edit then peaked at 859 MiB instead of 530 MiB (600 frames: 1263 MiB
    instead of 595 MiB), tiny model at 256 px. A fixed 16 MiB mmap threshold used to go with
    it; `benchmarks/allocator.py` showed it cost 2.3x the page faults and twice the system
    time (every large activation a fresh, zeroed mapping; both compute threads faulting under
    one lock) while the long-clip peak stayed flat without it, so glibc's dynamic threshold
    is left alone. Any of glibc's own ``MALLOC_*`` variables (or ``GLIBC_TUNABLES``) in the
    environment means the user chose: then nothing is changed. No-op outside glibc.
    """
    import ctypes
    import ctypes.util

    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


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


def read_frames(path: str, start, end, stride: int, max_frames: int | None):
    from .. import media as video

    return video.read_clip(Path(path).expanduser(), start, end, stride, max_frames)
