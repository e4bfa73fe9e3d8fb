"""Every clip the page accepts, shown: the upload itself where the browser plays it, a small
H.264 preview (`media.browser`) where it cannot.

The upload box takes the file; the player beside it never gets a file the browser cannot
decode (an AVI, an MJPEG .mov, an .mpg, a phone's HEVC clip), which would show "Video not
playable" and an empty panel although the clip edits fine. Jobs always read the upload.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from ..media.browser import browser_playable, write_browser_preview

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_stem(path: str | None) -> str:
    """A file name's stem fit for a name on the server (results, previews): at most 40 of
    ``A-Za-z0-9_.-``, ``clip`` when nothing is left."""
    return _UNSAFE.sub("-", Path(path or "clip").stem)[:40].strip("-.") or "clip"


class UploadPreviews:
    """Makes what the page's player shows for an upload, in the server's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def playable(self, video: str | None) -> tuple[str | None, bool]:
        """(what to play, whether it is a preview made here); (None, False) for no upload.

        Raises `Pix2VideoError` (one sentence) when the file cannot be read.
        """
        if not video:
            return None, False
        if browser_playable(video):
            return video, False
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"preview-{secrets.token_hex(4)}-{safe_stem(video)}.mp4"
        return str(write_browser_preview(video, target)), True
