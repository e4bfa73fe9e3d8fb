"""Errors a user can act on.

Everything raised as a `Pix2VideoError` carries one sentence that says what is wrong and
how to fix it; the CLI prints that sentence and exits non-zero instead of a traceback.
"""

from __future__ import annotations


class Pix2VideoError(Exception):
    """Base class of user-facing errors (bad input, missing model, unwritable output)."""

    exit_code: int = 2


class InputError(Pix2VideoError, ValueError):
    """The input (frames, video, depth maps, prompt, option values) cannot be used."""


class VideoError(InputError):
    """A video or image sequence cannot be read, or an output video cannot be written."""


class ModelNotAvailableError(Pix2VideoError):
    """A model is unknown, or not available offline and could not be downloaded."""


class EditCancelled(Pix2VideoError):
    """The user cancelled a running edit (checked before every UNet evaluation)."""

    exit_code = 130
