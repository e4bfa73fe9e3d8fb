"""What a bug report needs to know about this machine: `pix2video doctor`.

Every check works offline and fails soft: a check that cannot run says why on its line
instead of stopping the report.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGES = (
    ("pix2video", "pix2video"),
    ("torch", "torch"),
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("huggingface_hub", "huggingface_hub"),
    ("PyAV", "av"),
    ("OpenCV", "opencv-python-headless"),
    ("numpy", "numpy"),
    ("gradio", "gradio"),
    ("ray", "ray"),
)
ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1", "mpeg4", "aac", "libopus")
"""What `media/encode.py` writes (H.264 + AAC) and what else an output might want."""
DECODERS = ("h264", "hevc", "vp9", "av1", "mpeg4", "prores", "aac", "mp3", "opus")
Section = list[tuple[str, str]]


def versions() -> Section:
    lines = [("python", f"{platform.python_version()} ({sys.executable})")]
    for label, distribution in PACKAGES:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = "not installed"
        if distribution == "opencv-python-headless" and version == "not installed":
            try:
                version = metadata.version("opencv-python")
            except metadata.PackageNotFoundError:
                pass
        lines.append((label, version))
    lines.append(("platform", platform.platform()))
    return lines


def devices() -> Section:
    """Each device torch sees, and which dtypes run a matrix product on it."""
    import torch

    names = ["cpu"]
    lines: Section = [("CPU threads", str(torch.get_num_threads()))]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
            names.append(f"cuda:{i}")
    else:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        lines.append(("cuda", f"not available (this torch build: {build})"))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    for name in names:
        works = []
        for dtype in ("float32", "float16", "bfloat16"):
            try:
                x = torch.ones(8, 8, device=name, dtype=getattr(torch, dtype))
                (x @ x).sum().item()
                works.append(dtype)
            except Exception:  # noqa: BLE001 - a dtype this device cannot run
                continue
        lines.append((f"{name} dtypes", ", ".join(works) or "none"))
    lines.append(("--dtype auto", auto_dtypes(names)))
    return lines


def auto_dtypes(names: list[str]) -> str:
    """What `--dtype auto` picks on each device, and why (`precision.choose_dtype`)."""
    from .precision import choose_dtype, cpu_flags, onednn_isa_limit

    flags, limit = cpu_flags(), onednn_isa_limit()
    kinds = dict.fromkeys(name.split(":")[0] for name in names if name != "mps")
    return "; ".join(
        f"{kind}: {choose_dtype('auto', kind, flags if kind == 'cpu' else (), limit).describe()}"
        for kind in kinds
    )


def codecs() -> Section:
    """Encoders and decoders PyAV's FFmpeg has (`media/encode.py` writes H.264 with AAC audio)."""
    try:
        import av
    except ImportError as exc:
        return [("PyAV", f"cannot be imported ({exc})")]

    def have(name: str, mode: str) -> bool:
        try:
            av.codec.Codec(name, mode)
            return True
        except Exception:  # noqa: BLE001 - unknown to this FFmpeg build
            return False

    return [
        ("FFmpeg", str(getattr(av, "ffmpeg_version_info", "?"))),
        ("encoders", ", ".join(f"{n} {'yes' if have(n, 'w') else 'no'}" for n in ENCODERS)),
        ("decoders", ", ".join(f"{n} {'yes' if have(n, 'r') else 'no'}" for n in DECODERS)),
    ]


def models() -> Section:
    """The hub (reachable?), its local cache, and the bundled models."""
    from huggingface_hub import constants

    from .hub import endpoint, hub_reachable, offline_mode
    from .hub_cache import cached_models, format_size
    from .models import BUNDLED_MODELS, gated_hint, known_models

    if offline_mode():
        hub = "offline mode (HF_HUB_OFFLINE)"
    else:
        hub = "reachable" if hub_reachable() else "cannot be reached (downloads are off)"
    lines = [("hub", f"{endpoint()}: {hub}"), ("hub cache", str(constants.HF_HUB_CACHE))]
    cached = cached_models()
    known = known_models()
    for model in cached:
        what = f" ({known[model.model]})" if model.model in known else ""
        lines.append((model.model, f"{format_size(model.size)}, {model.files} files{what}"))
    if not cached:
        lines.append(("cached models", "none"))
    names = {model.model for model in cached}
    for name, what in known.items():  # what pix2video uses unasked or knows, not cached yet
        if name not in names:
            get = f"`pix2video download {name}`{gated_hint(name)}"
            lines.append((name, f"not cached ({what}); get it with {get}"))
    bundled = sorted({str(path) for path in BUNDLED_MODELS.values()})
    for path in bundled:
        present = "present" if Path(path).is_dir() else "MISSING (reinstall pix2video)"
        lines.append((f"bundled {Path(path).name}", present))
    return lines


def disk() -> Section:
    """Free space where models, caches and temporary files go."""
    from huggingface_hub import constants

    from .settings import EditSettings

    places = {
        "hub cache": constants.HF_HUB_CACHE,
        "pix2video cache": os.environ.get("PIX2VIDEO_CACHE_DIR")
        or EditSettings.defaults()["cache_dir"],
        "temporary files": tempfile.gettempdir(),
    }
    lines = []
    for label, place in places.items():
        path = Path(place).expanduser()
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        usage = shutil.disk_usage(existing)
        lines.append(
            (label, f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB ({path})")
        )
    return lines


SECTIONS = {
    "Versions": versions,
    "Devices": devices,
    "Video codecs": codecs,
    "Models": models,
    "Disk": disk,
}


def report() -> dict[str, Section]:
    """Every section; a section whose check fails says so in one line."""
    out = {}
    for title, check in SECTIONS.items():
        try:
            out[title] = check()
        except Exception as exc:  # noqa: BLE001 - the report goes on
            out[title] = [("error", f"{type(exc).__name__}: {exc}")]
    return out
