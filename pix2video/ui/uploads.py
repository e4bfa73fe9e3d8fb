"""Every clip the page accepts, shown: a browser-playable stand-in for what a browser cannot play.

The input widget plays the uploaded file itself, so an AVI, an MJPEG .mov, an .mpg or a
phone's HEVC clip shows "Video not playable" and an empty panel, although it edits fine.
On upload the page swaps in a small H.264 preview (`media.browser`) and remembers which
upload it stands for; every handler asks `original` for the file to edit, so jobs always
read the upload itself, never its preview.

A preview is named ``preview-<token>-<name>.mp4`` with a random token, and is found again
by that token: Gradio hands a returned file back from a copy in its cache, so the path
differs but the name stays.
"""

from __future__ import annotations

import re
import secrets
import threading
from pathlib import Path

from ..errors import Pix2VideoError
from ..media.browser import browser_playable, write_browser_preview

_TOKEN = re.compile(r"^preview-([0-9a-f]{16})-")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class UploadPreviews:
    """Previews of uploads a browser cannot play, and the upload each one stands for."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._originals: dict[str, str] = {}  # token -> the upload's path
        self._lock = threading.Lock()

    def preview_of(self, video: str | None) -> str | None:
        """A playable preview of `video`, or None when it plays as it is (or is a preview).

        Raises `Pix2VideoError` (one sentence) when the file cannot be read.
        """
        if not video or self.is_preview(video) or browser_playable(video):
            return None
        token = secrets.token_hex(8)
        stem = _SAFE.sub("-", Path(video).stem)[:40].strip("-.") or "clip"
        self.folder.mkdir(parents=True, exist_ok=True)
        preview = write_browser_preview(video, self.folder / f"preview-{token}-{stem}.mp4")
        with self._lock:
            self._originals[token] = str(video)
        return str(preview)

    def is_preview(self, video: str | None) -> bool:
        return bool(video) and self._token(video) is not None

    def original(self, video: str | None) -> str | None:
        """The upload a preview stands for; any other path as it is."""
        token = self._token(video) if video else None
        if token is None:
            return video
        with self._lock:
            found = self._originals[token]
        if not Path(found).exists():
            raise Pix2VideoError(
                "The uploaded video is no longer on the server (uploads are kept for a few "
                "hours); upload it again."
            )
        return found

    def _token(self, video: str) -> str | None:
        """The token of one of this server's previews, or None for any other file."""
        match = _TOKEN.match(Path(video).name)
        with self._lock:
            return match.group(1) if match and match.group(1) in self._originals else None
