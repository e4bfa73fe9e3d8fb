"""The prompts of a job, encoded: the edit prompt, the negative one, and the source prompt
(the user's, or BLIP's caption of the anchor frame)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, ModelNotAvailableError
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
    return pipe.encode_prompt(s.prompt), pipe.encode_prompt(s.negative_prompt)


def source_prompt(
    pipe, ctx: JobContext, source: SourceClip, device, edit_embeddings: tuple[Any, Any]
) -> Prompts:
    """The source prompt, captioned when the settings give none, and every prompt encoded."""
    s = ctx.settings
    tic = time.perf_counter()
    text, captioned = s.source_prompt, False
    if not (text or "").strip():
        text = caption_anchor(
            source.anchor_source_frame, s.captioner, str(device), ctx.cache, ctx.warn
        )
        captioned = True
        ctx.info(f'Source prompt (caption of frame {source.anchor_index}): "{text}"')
    try:
        embedding = pipe.encode_prompt(text)
    except InputError as exc:
        if not captioned:
            raise
        raise InputError(
            f"The caption {text[:40]!r}... is too long for the text encoder; "
            "pass a shorter --source-prompt."
        ) from exc
    ctx.seconds["caption"] = time.perf_counter() - tic
    return Prompts(*edit_embeddings, embedding, text, captioned)


def caption_anchor(frame, captioner: str, device: str, cache, warn: MessageCallback) -> str:
    """The source prompt: BLIP's caption of the anchor frame (cached by frame and captioner)."""
    from ..pipelines.caption import MAX_NEW_TOKENS, caption_frame
    from .cache import hash_array, make_key, model_fingerprint

    key = make_key(
        "caption",
        captioner=model_fingerprint(captioner),
        frame=hash_array(frame),
        max_new_tokens=MAX_NEW_TOKENS,
    )
    text = cache.load("caption", key)
    if not isinstance(text, str):
        try:
            text = caption_frame(frame, captioner, device)
        except ModelNotAvailableError as exc:
            # models.py's hint about `tiny` concerns the diffusion model, not the captioner.
            message = str(exc).replace(" (or `tiny` for the bundled random-weight model)", "")
            raise ModelNotAvailableError(
                f"{message.rstrip('.')}; or pass --source-prompt to skip captioning."
            ) from exc
        if text.strip():
            save_to_cache(cache, "caption", key, text, warn)
    if not text.strip():
        raise InputError(
            f"The captioner '{captioner}' gave an empty caption for the anchor frame; "
            "describe the input with --source-prompt."
        )
    return text.strip()
