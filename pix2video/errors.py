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


class OptionError(InputError):
    """A bad value of one named option.

    The option is named the way the caller spelled it (`num_inference_steps` for the
    pipeline, `--steps` for the command line and config files): a front end re-names it
    with `named` instead of checking the value a second time.
    """

    def __init__(self, option: str, problem: str) -> None:
        self.option, self.problem = option, problem
        super().__init__(f"{option} {problem}")

    def named(self, option: str) -> OptionError:
        return OptionError(option, self.problem)


class VideoError(InputError):
    """A video or image sequence cannot be read, or an output video cannot be written."""


class ModelNotAvailableError(Pix2VideoError):
    """A model is unknown, or not available offline and could not be downloaded."""


class EditCancelled(Pix2VideoError):
    """The user cancelled a running edit (checked before every UNet evaluation)."""

    exit_code = 130


OUT_OF_MEMORY = (
    "Out of {where}memory; try --dtype float16, --feature-store-dtype float16, a smaller "
    "--size or fewer frames."
)


def describe_failure(exc: BaseException, hint: str = "") -> str:
    """One sentence for any exception: a user error's own, out of memory, or the unexpected one's
    type and first line (with `hint` in brackets), for front ends that must not show a traceback."""
    if isinstance(exc, Pix2VideoError):
        return str(exc)
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return OUT_OF_MEMORY.format(where="GPU ")
    if isinstance(exc, MemoryError):
        return OUT_OF_MEMORY.format(where="")
    first = (str(exc).strip().splitlines() or [""])[0]
    return (
        f"Unexpected {name}: {first} ({hint})."
        if hint
        else f"Unexpected {name}: {first.rstrip('.')}."
    )
