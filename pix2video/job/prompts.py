"""The prompts of a job, encoded: the edit prompt, the negative one, and the source prompt
(the user's, or BLIP's caption of the anchor frame)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, ModelNotAvailableError
from ..models import require_available, resolve_captioner
from .context import JobContext, save_to_cache
from .results import MessageCallback
from .source import SourceClip


@dataclass(frozen=True)
class Prompts:
    """The encoded prompts, and the source prompt as text (captioned or given)."""

    edit: Any
    negative: Any
    source: Any
    source_prompt: str
    captioned: bool


def encode_edit_prompts(pipe, ctx: JobContext) -> tuple[Any, Any]:
    """(edit, negative) text embeddings."""
    s = ctx.settings
    return pipe.encode_prompt(s.prompt), pipe.encode_negative_prompt(s.negative_prompt)


def source_text(ctx: JobContext, source: SourceClip, device) -> tuple[str, bool]:
    """(source prompt, captioned): the settings', or the captioner's on `device`. A driver of
    workers needs the text alone (its cache keys); it loads no diffusion model for it."""
    s = ctx.settings
    text = s.source_prompt
    if (text or "").strip():
        return text, False
    text = caption_anchor(
        source.anchor_source_frame, s.captioner, str(device), ctx.cache, ctx.warn, s.model
    )
    ctx.info(f'Source prompt (caption of frame {source.anchor_index}): "{text}"')
    return text, True


def encode_source_prompt(
    pipe, text: str, captioned: bool, edit_embeddings: tuple[Any, Any]
) -> Prompts:
    """Every prompt encoded; a caption too long for the text encoder is one sentence. The
    job's prompts are all encoded now, so a transformer backbone frees its text encoders
    (`pipelines.text_encoders`: a reused pipeline reloads them only for a new prompt)."""
    try:
        embedding = pipe.encode_prompt(text)
    except InputError as exc:
        if not captioned:
            raise
        raise InputError(
            f"The caption {text[:40]!r}... is too long for the text encoder; "
            "pass a shorter --source-prompt."
        ) from exc
    release = getattr(pipe, "release_text_encoders", None)
    if release is not None:
        release()
    return Prompts(*edit_embeddings, embedding, text, captioned)


def caption_anchor(
    frame, captioner: str, device: str, cache, warn: MessageCallback, model: str = ""
) -> str:
    """The source prompt: BLIP's caption of the anchor frame (cached by frame and captioner)."""
    from ..pipelines.caption import caption_frame

    captioner = resolve_captioner(captioner, model)  # `auto`: BLIP, or tiny-blip for `tiny`
    key = caption_key(frame, captioner)
    text = cache.load("caption", key)
    if not isinstance(text, str):
        with skip_captioning_hint():
            text = caption_frame(frame, captioner, device)
        if text.strip():
            save_to_cache(cache, "caption", key, text, warn)
    if not text.strip():
        raise InputError(
            f"The captioner '{captioner}' gave an empty caption for the anchor frame; "
            "describe the input with --source-prompt."
        )
    return text.strip()


def caption_key(frame, captioner: str) -> str:
    from ..pipelines.caption import MAX_NEW_TOKENS
    from .cache import hash_array, make_key, model_fingerprint

    return make_key(
        "caption",
        captioner=model_fingerprint(captioner),
        frame=hash_array(frame),
        max_new_tokens=MAX_NEW_TOKENS,
    )


def check_captioner(frame, captioner: str, cache, model: str) -> None:
    """Fail at once (nothing imported, nothing loaded) when the anchor frame's caption is not
    cached and the captioner is neither in the hub cache nor downloadable."""
    captioner = resolve_captioner(captioner, model)
    if not isinstance(cache.load("caption", caption_key(frame, captioner)), str):
        with skip_captioning_hint():
            require_available(captioner, "captioning model")


@contextlib.contextmanager
def skip_captioning_hint() -> Iterator[None]:
    """A captioner that is not available: say that a source prompt makes it unnecessary."""
    try:
        yield
    except ModelNotAvailableError as exc:
        # models.py's hint about `tiny` concerns the diffusion model, not the captioner.
        message = str(exc).replace(" (or `tiny` for the bundled random-weight model)", "")
        raise ModelNotAvailableError(
            f"{message.rstrip('.')}; or pass --source-prompt to skip captioning."
        ) from exc
