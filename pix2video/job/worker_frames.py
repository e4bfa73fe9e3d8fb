"""The edited frames of a clip split across workers: each worker decodes its own, the driver
keeps them on disk until it writes the output.

The driver loads no diffusion model when it splits a clip (a second copy on a worker's GPU
may not fit), so the VAE decoding happens on the workers, in parallel: after its edit, each
worker decodes its positions' final latents one frame at a time and sends each frame
through the outbox, the way everything else reaches the driver ("frame", rank, clip index,
(H, W, 3) uint8). One rule for local processes and Ray nodes alike, since nodes may share no
folder. The driver stores each frame as it arrives as one `.npy` file in the job's scratch
folder (`DecodedFrames`) and reads them back in clip order while encoding: it holds one
frame at a time however long the clip, as a one-process job does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .context import JobContext

if TYPE_CHECKING:
    import numpy as np


def send_decoded(pipe, rows: np.ndarray, clips: list[int], rank: int, outbox) -> int:
    """Decode `rows` (a worker's final latents, float32, the order of `clips`) and send each
    frame; the number decoded. One frame per VAE call, as the one-process output does, so the
    frames are the same bits."""
    import torch

    for row, clip in enumerate(clips):
        frame = pipe.decode_latents(torch.from_numpy(rows[row : row + 1]))[0]
        outbox.put(("frame", rank, clip, frame))
    return len(clips)


class DecodedFrames:
    """The frames the workers sent, one `.npy` each in the scratch folder, by clip index."""

    def __init__(self, ctx: JobContext) -> None:
        self.folder: Path = ctx.scratch.path / "decoded"
        self.folder.mkdir(exist_ok=True)
        self.received = 0  # frames stored (a restarted attempt may send some again)

    def put(self, clip: int, frame: np.ndarray) -> None:
        import numpy as np

        np.save(self._path(clip), frame)  # the driver's own folder: a reader comes later
        self.received += 1

    def read(self, clip: int) -> np.ndarray:
        """The frame at `clip`; `write_output`'s `decode`."""
        import numpy as np

        return np.load(self._path(clip))

    def _path(self, clip: int) -> Path:
        return self.folder / f"{clip:06d}.npy"
