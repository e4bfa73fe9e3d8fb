"""The model hub: whether it can be reached, what the local cache holds, downloads with progress.

One place decides whether a model may be downloaded (`can_download`): not when
`HF_HUB_OFFLINE` is set, and not when the hub's endpoint does not answer a short probe
(`PROBE_TIMEOUT_S`, no retries). Every loader (`models.load_pretrained`) then reads the local
cache only, so a missing model is one sentence within seconds instead of the hub client's
five retries with back-off for every file (about four minutes per model, measured).

Downloads go through `huggingface_hub.hf_hub_download` file by file (it resumes an
interrupted file from its ``.incomplete`` part), so that progress can be reported per model
in bytes (`reporting_downloads`) and every file checked against the hub's size and hash.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import ModelNotAvailableError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = float(os.environ.get("PIX2VIDEO_HUB_TIMEOUT", "3"))
"""How long the reachability probe waits for the hub to answer (connect and first response)."""
PROBE_TTL_S = 60.0
"""A probe's answer is reused this long (a server re-probes when the network comes back)."""
TRUE = {"1", "true", "yes", "on"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
SKIPPED_SUFFIXES = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel", ".pb")
SKIPPED_FOLDERS = {"onnx", "openvino", "coreml", "flax", "tf"}
VARIANTS = {"fp16", "bf16", "ema", "non_ema", "fp32"}
LIBRARY_WEIGHTS = {"diffusion_pytorch_model", "model", "pytorch_model"}

DownloadProgress = Callable[[str, int, int], None]
"""``progress(model, bytes_done, bytes_total)``: a model's download, all its files together."""

_listener: contextvars.ContextVar[DownloadProgress | None] = contextvars.ContextVar(
    "pix2video_download_progress", default=None
)
_probes: dict[str, tuple[float, bool]] = {}
_probe_lock = threading.Lock()


# ------------------------------------------------------------------------------ reachability
def endpoint() -> str:
    """The hub's address (``HF_ENDPOINT``, as huggingface_hub reads it)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for the local cache only."""
    return any(
        os.environ.get(name, "").strip().lower() in TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the endpoint answers an HTTP request within `timeout` (any status counts).

    The answer is kept for `PROBE_TTL_S`. The request runs in a thread that is given up
    after `timeout` too, so a name lookup that hangs cannot hold the caller.
    """
    url = endpoint()
    now = time.monotonic()
    with _probe_lock:
        known = _probes.get(url)
        if known is not None and now - known[0] < PROBE_TTL_S:
            return known[1]
    answer: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(url + "/api/models?limit=1", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - http(s) only
                answer.append(True)
        except urllib.error.HTTPError:  # it answered, with an error status: reachable
            answer.append(True)
        except (OSError, ValueError):  # refused, timed out, unknown host, bad URL
            answer.append(False)

    worker = threading.Thread(target=probe, daemon=True, name="pix2video-hub-probe")
    worker.start()
    worker.join(timeout + 0.5)
    reachable = bool(answer and answer[0])
    with _probe_lock:
        _probes[url] = (time.monotonic(), reachable)
    return reachable


def can_download() -> bool:
    """Whether a model missing from the local cache may be fetched now (the one place that decides)."""
    return not offline_mode() and hub_reachable()


def offline_reason() -> str:
    """Why nothing can be downloaded, as the end of a sentence."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    return f"the hub ({endpoint()}) cannot be reached"


def forget_probe() -> None:
    """Probe again on the next question (after the network or ``HF_ENDPOINT`` changed)."""
    with _probe_lock:
        _probes.clear()


# ------------------------------------------------------------------------------ progress
@contextlib.contextmanager
def reporting_downloads(progress: DownloadProgress | None) -> Iterator[None]:
    """Within the block (this thread or task), every model download reports to `progress`."""
    token = _listener.set(progress)
    try:
        yield
    finally:
        _listener.reset(token)


def current_listener() -> DownloadProgress | None:
    return _listener.get()


class DownloadMeter:
    """A `DownloadProgress` that says "Downloading M: 120 of 990 MB at 8.2 MB/s" to `show`.

    `show(text, done, total)` is called at most every `interval` seconds per model (and at
    the end), for front ends that print a line rather than draw a bar (the web page).
    """

    def __init__(
        self,
        show: Callable[[str, int, int], None],
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.show = show
        self.interval = interval
        self.clock = clock
        self._started: dict[str, tuple[float, int]] = {}
        self._shown: dict[str, float] = {}

    def __call__(self, model: str, done: int, total: int) -> None:
        now = self.clock()
        started, first = self._started.setdefault(model, (now, done))
        if done < total and now - self._shown.get(model, -1e9) < self.interval:
            return
        self._shown[model] = now
        speed = (done - first) / (now - started) if now > started else 0.0
        text = f"Downloading {model}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB"
        if speed > 0 and done < total:
            text += f" at {speed / 1e6:.1f} MB/s"
        self.show(text, done, total)


class _ByteCounter:
    """What huggingface_hub's ``tqdm_class`` is given: counts a file's bytes into a callback."""

    def __init__(self, on_bytes: Callable[[int], None], *, initial: int = 0, **_: object) -> None:
        self.on_bytes = on_bytes
        self.n = initial
        if initial:
            on_bytes(initial)

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self.on_bytes(int(n))

    def close(self) -> None:
        pass

    def __enter__(self) -> _ByteCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ files
@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repository as its API describes it."""

    path: str
    size: int
    sha256: str | None = None  # LFS files: the content's sha256
    blob_id: str | None = None  # the git blob id (sha1 of "blob <size>\\0" + content)


@dataclass
class ModelDownload:
    """What `download_model` found and did for one repository."""

    model: str
    commit: str
    folder: Path
    files: list[RemoteFile] = field(default_factory=list)
    present_bytes: int = 0  # already in the cache before this call
    downloaded_bytes: int = 0  # fetched by this call (resumed files: only the rest)
    verified: int = 0  # files whose size and hash match the hub's

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def is_hub_id(name: str) -> bool:
    """``owner/name`` or ``name``, not a path (a folder that exists is not a hub id either)."""
    return (
        bool(name)
        and not name.startswith(("/", ".", "~"))
        and name.count("/") <= 1
        and not Path(name).exists()
    )


def wanted_files(paths: list[str]) -> list[str]:
    """The files a loader reads: configs, tokenizers and one copy of each model's weights.

    Per folder, `.safetensors` weights when there are any (else `.bin`, else `.ckpt`/`.pt`),
    without precision/EMA variants (``*.fp16.safetensors``) when the plain file exists, and
    only the library's own files (``diffusion_pytorch_model*``, ``model*``) where a folder has
    them beside a single-file copy (SD3.5's ControlNets); no TensorFlow/Flax/ONNX/OpenVINO
    copies; in a diffusers repository (``model_index.json``) weights only in component
    folders (a ``config.json``): no single-file checkpoints at its top level (FLUX.1 Depth's
    23 GB one), no ComfyUI ``text_encoders/`` (SD3.5's, 15 GB).
    """
    diffusers_repo = "model_index.json" in paths
    components = {
        str(PurePosixPath(p).parent) for p in paths if PurePosixPath(p).name == "config.json"
    }
    folders: dict[str, list[str]] = {}
    chosen = []
    for path in paths:
        pure = PurePosixPath(path)
        if set(pure.parts[:-1]) & SKIPPED_FOLDERS or pure.suffix in SKIPPED_SUFFIXES:
            continue
        if pure.suffix in WEIGHT_SUFFIXES:
            if diffusers_repo and str(pure.parent) not in components:
                continue
            folders.setdefault(str(pure.parent), []).append(path)
        else:
            chosen.append(path)
    for weights in folders.values():
        weights = [p for p in weights if _library_file(p)] or weights
        for suffixes in ((".safetensors",), (".bin",), (".ckpt", ".pt", ".pth")):
            found = [p for p in weights if PurePosixPath(p).suffix in suffixes]
            if found:
                plain = [p for p in found if _variant(p) is None]
                chosen += plain or found
                break
    return sorted(chosen)


def _library_file(path: str) -> bool:
    """A weights file named as diffusers/transformers save them (sharded or not)."""
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", PurePosixPath(path).name.split(".")[0])
    return stem in LIBRARY_WEIGHTS


def _variant(path: str) -> str | None:
    parts = PurePosixPath(path).name.split(".")
    return parts[-2] if len(parts) > 2 and parts[-2] in VARIANTS else None


def remote_files(model: str) -> tuple[str, list[RemoteFile]]:
    """(commit, the files `wanted_files` picks) of a hub repository, from the hub's API."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint()).model_info(model, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    files = []
    for path in wanted_files(list(siblings)):
        s = siblings[path]
        lfs = s.lfs
        files.append(
            RemoteFile(
                path=path,
                size=int(lfs.size if lfs is not None else (s.size or 0)),
                sha256=lfs.sha256 if lfs is not None else None,
                blob_id=s.blob_id,
            )
        )
    return str(info.sha), files


def in_cache(model: str) -> bool:
    """Whether the local hub cache holds any snapshot of `model` (no network, no file check)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def cached_path(model: str, path: str, commit: str | None = None) -> Path | None:
    """The file in the local hub cache (at `commit`, or the cached ``main``), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, path, revision=commit)
    return Path(found) if isinstance(found, str) else None


def file_matches(local: Path, remote: RemoteFile, check_hash: bool = True) -> bool:
    """Size, and the sha256 (LFS) or git blob id (small files) the hub gives, match."""
    if local.stat().st_size != remote.size:
        return False
    if not check_hash:
        return True
    if remote.sha256:
        digest = hashlib.sha256()
        expected = remote.sha256
    elif remote.blob_id:
        digest = hashlib.sha1(f"blob {remote.size}\0".encode())  # noqa: S324 - git's own id
        expected = remote.blob_id
    else:
        return True
    with local.open("rb") as f:
        for chunk in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == expected


def download_model(
    model: str, progress: DownloadProgress | None = None, verify: bool = True
) -> ModelDownload:
    """Fetch what loading `model` (a hub id) reads into the hub cache; resume, report, check.

    Files already cached at the hub's current commit (same size) are kept; a file whose
    download was interrupted resumes from its partial copy (`_fetch`). With `verify`, every
    file is checked against the hub's sha256 (large files) or git blob id (small ones); a
    mismatch is removed and reported. Raises `ModelNotAvailableError` when the hub cannot be
    reached or does not have the model.
    """
    progress = progress or current_listener() or (lambda *_: None)
    commit, files = _listing(model)
    result = ModelDownload(model, commit, Path(), files)
    missing = _count_present(result)
    _fetch_missing(result, missing, progress)
    _check_files(result, verify)
    progress(model, result.total_bytes, result.total_bytes)
    return result


def _listing(model: str) -> tuple[str, list[RemoteFile]]:
    """`remote_files`, with every way of not getting it as one `ModelNotAvailableError`.

    Asks `can_download` first, so that an offline machine fails at once instead of
    waiting for the hub client's retries.
    """
    if not can_download():
        raise ModelNotAvailableError(
            f"The model '{model}' cannot be downloaded now: {offline_reason()}."
        )
    try:
        return remote_files(model)
    except Exception as exc:  # noqa: BLE001 - not found, gated, network: one sentence
        raise ModelNotAvailableError(
            f"The hub ({endpoint()}) has no model '{model}' this machine can download "
            f"({type(exc).__name__}); check the name (and `hf auth login` for a gated one)."
        ) from exc


def _count_present(result: ModelDownload) -> list[RemoteFile]:
    """The files not yet cached at the commit (same size); the others count as present.

    Adds the present files to `result.present_bytes`, which the progress starts from.
    """
    missing = []
    for remote in result.files:
        local = cached_path(result.model, remote.path, result.commit)
        if local is not None and local.stat().st_size == remote.size:
            result.present_bytes += remote.size
        else:
            missing.append(remote)
    return missing


def _fetch_missing(
    result: ModelDownload, missing: list[RemoteFile], progress: DownloadProgress
) -> None:
    """Download `missing` one file after another, reporting the model's bytes as one total.

    A failure becomes one sentence that says to run again (the partial file is kept, so
    the next run resumes it).
    """
    model, commit = result.model, result.commit
    total, done = result.total_bytes, result.present_bytes
    lock = threading.Lock()

    def add(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            progress(model, min(done, total), total)

    progress(model, done, total)
    for remote in missing:
        try:
            result.downloaded_bytes += _fetch(model, remote, commit, add)
        except ModelNotAvailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, disk: one sentence; the part stays
            first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
            raise ModelNotAvailableError(
                f"Downloading '{remote.path}' of '{model}' failed ({type(exc).__name__}: "
                f"{first}); run the same command again to resume it."
            ) from exc


def _check_files(result: ModelDownload, verify: bool) -> None:
    """Every file is in the cache and matches the hub (hash too with `verify`); sets the folder.

    A file that does not match is removed, so that the next download fetches it again.
    """
    model, commit = result.model, result.commit
    for remote in result.files:
        local = cached_path(model, remote.path, commit)
        if local is None or not file_matches(local, remote, check_hash=verify):
            if local is not None:
                local.resolve().unlink(missing_ok=True)  # the next call fetches it again
            raise ModelNotAvailableError(
                f"The file '{remote.path}' of '{model}' did not match the hub's size and hash "
                "and was removed; run `pix2video download` again."
            )
        result.verified += 1
        result.folder = local.parents[len(PurePosixPath(remote.path).parts) - 1]


def _fetch(model: str, remote: RemoteFile, commit: str, add: Callable[[int], None]) -> int:
    """Download one file into the hub cache's layout, resuming its partial copy; bytes fetched.

    huggingface_hub resumes a file only within one call (its partial file is deleted when
    the call fails), so an interrupted command would start large files over. Here the part
    is kept as ``blobs/<etag>.part`` until it is complete, then moved into place as the
    cache layout documents it (``blobs/<etag>``, ``snapshots/<commit>/<path>`` linking to it,
    ``refs/main``), where every loader finds it.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(model, remote.path, revision=commit, endpoint=endpoint())
    meta = get_hf_file_metadata(url)
    repo = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}"
    blob = repo / "blobs" / str(meta.etag)
    fetched = 0
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        part = blob.with_name(blob.name + ".part")
        start = part.stat().st_size if part.is_file() else 0
        if start > remote.size:
            start = 0
        with part.open("ab" if start else "wb") as f:
            http_get(
                meta.location,
                f,
                resume_size=start,
                headers=build_hf_headers(),
                expected_size=remote.size,
                tqdm_class=functools.partial(_ByteCounter, add),
            )
        fetched = part.stat().st_size - start
        os.replace(part, blob)
    link = repo / "snapshots" / commit / remote.path
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks here (Windows without developer mode): a copy
            shutil.copyfile(blob, link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return fetched
