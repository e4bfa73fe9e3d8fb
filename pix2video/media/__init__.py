"""Media I/O: reading clips, choosing frames, resizing, and writing results with the source's audio.

One module per object, as PyAV cuts it: `probe` (opening an input, what it holds, its
decoder), `selection` (which frames: positions, stride, count), `seek` (keyframe seeking to
a late start), `decode` (the streamed readers of folders and videos: `open_clip`,
`read_clip`), `reader` (`Clip` and the `ClipReader` interface they share), `sizes`
(processing sizes, resizing), `audio` (the source's audio) and `encode` (writing a video or
PNG folder).

Everything goes through PyAV (FFmpeg's libraries), so any file FFmpeg can read works as
input (mp4, mov, avi, mkv, webm, mpg, gif; H.264, MJPEG, MPEG-2, VP9, ...), and outputs are
encoded in-process (no ffmpeg binary, no command strings). Image folders are read with
Pillow. Conventions used throughout:

- Frames are ``HxWx3`` ``uint8`` RGB numpy arrays.
- Positions (``--start`` / ``--end``): an integer is a frame number, a value with a decimal
  point, an ``s`` suffix or ``mm:ss`` is seconds (see `parse_position`). A frame's time is
  ``index / source_fps``; ``end`` is exclusive.
- Every problem a user can cause raises `VideoError` (an `InputError`) with one sentence.
- Long inputs are streamed: `open_clip` returns a `ClipReader` that decodes the selection one
  frame at a time on each pass (seeking to a late ``--start``), so memory does not grow with
  the clip's length; `read_clip` is the same reader collected into a list.

Layer: the bottom one beside the package root (`errors`, `atomic`); everything may use it.
"""

from .audio import read_audio_info
from .decode import open_clip, read_clip
from .encode import VIDEO_EXTENSIONS, check_reusable_folder, write_video
from .probe import (
    DECODE_STATS,
    IMAGE_EXTENSIONS,
    DecodeStats,
    fps_fraction,
    list_image_files,
    probe,
)
from .reader import Clip, ClipReader
from .selection import parse_position
from .sizes import fit_size, parse_size, resize_frames, side_by_side

__all__ = [
    "DECODE_STATS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Clip",
    "ClipReader",
    "DecodeStats",
    "check_reusable_folder",
    "fit_size",
    "fps_fraction",
    "list_image_files",
    "open_clip",
    "parse_position",
    "parse_size",
    "probe",
    "read_audio_info",
    "read_clip",
    "resize_frames",
    "side_by_side",
    "write_video",
]
