"""The page's words: status summaries of a preview or an edit, and error sentences.

Kept apart from the handlers so the wording can change without touching how jobs run.
"""

from __future__ import annotations

import re

from ..job import AnchorPreview, EditResult

NO_VIDEO = "Choose a video first: upload one, or pick the example clip."
SOURCE_PLACEHOLDER = (
    "what the input shows (filled in from a caption of the anchor frame when you choose a video)"
)


def describe_result(result: EditResult) -> str:
    """The status after an edit: what was made, what it cost, what came from the cache."""
    n, (w, h) = result.frames, result.size
    total = result.seconds.get("total", 0.0)
    audio = ", with the source's audio" if result.has_audio else ""
    lines = [
        f"Edited {n} frame{'s' if n != 1 else ''} at {w}x{h} in {total:.1f} s "
        f"({result.steps} steps; {result.describe_rate()}{audio}).",
        f"UNet evaluations: inversion {result.unet_evaluations_inversion}, editing "
        f"{result.unet_evaluations_editing}; {describe_cache(result)}.",
        result.describe_precision(),
    ]
    if result.masked:
        lines.append(result.describe_mask())
    if result.frames_reused:
        lines.append(result.describe_reuse())
    return "\n".join(lines)


def describe_cache(result: EditResult) -> str:
    if not result.cache_enabled:
        return "the cache is off"
    if result.editing == "cached":
        return "the whole result came from the cache"
    n = result.frames
    if result.depth_cached == n and result.inversion_cached == n:
        reuse = "depth and inversion from the cache"
    elif result.depth_cached == 0 and result.inversion_cached == 0:
        reuse = "depth and inversion computed"
    else:
        reuse = (
            f"depth: {result.depth_cached} of {n} frames from the cache; inversion: "
            f"{result.inversion_cached} of {n} from the cache"
        )
    if result.editing == "resumed":
        reuse += f"; editing resumed after step {result.resumed_from_step + 1}"
    return reuse


def describe_preview(preview: AnchorPreview) -> str:
    return (
        f"Anchor frame (frame {preview.frame_index}) edited in {preview.seconds:.1f} s "
        f"({preview.unet_evaluations} UNet evaluations); the full edit with these settings "
        "gives this frame exactly and reuses its inversion."
        + (f"\n{preview.precision}" if preview.precision else "")
    )


def unexpected_message(exc: BaseException) -> str:
    """One line for an error that is not the user's to fix (its traceback is in the log)."""
    name = type(exc).__name__
    if "OutOfMemory" in name:
        return "Out of GPU memory; try a smaller size or fewer frames."
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"Unexpected {name}: {first} (the server's console has the details)."


OPTION = re.compile(r"--([a-z]+(?:-[a-z]+)*)")


def label(option: str, at_start: bool = False) -> str:
    """``max-frames`` as the page calls it: "Max frames" (mid-sentence: "max frames")."""
    words = option.replace("-", " ")
    return words.capitalize() if at_start else words
