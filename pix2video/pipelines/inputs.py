"""Checks of what a pipeline call is given besides the method's options: frames, prompts,
and the tensors a caller may pass instead of having them computed (depth, x_T, masks).

`EditOptions` checks the method's options when it is built; these are the rest of
`Pix2VideoBase.__call__`'s arguments, all checked before any model work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..core.options import EditOptions
from ..errors import InputError


def check_call_inputs(
    pipe,
    frames: Sequence,
    prompt: str,
    source_prompt: str | None,
    options: EditOptions,
    depth_maps: torch.Tensor | np.ndarray | None = None,
    negative_prompt: str = "",
    inverted_latents: torch.Tensor | None = None,
    depth: torch.Tensor | None = None,
    inversion_batch_size: int = 1,
    masks: Sequence[np.ndarray] | None = None,
) -> None:
    """One `InputError` for the first thing `pipe` (a `Pix2VideoBase`) cannot use."""
    if len(frames) == 0:
        raise InputError("There are no frames to edit.")
    sizes = {
        np.asarray(f).shape[:2] if not isinstance(f, Image.Image) else f.size[::-1] for f in frames
    }
    if len(sizes) > 1:
        raise InputError(f"All frames must have the same size, got {sorted(sizes)}.")
    height, width = sizes.pop()
    multiple = pipe.size_multiple
    if height % multiple or width % multiple or not height or not width:
        raise InputError(f"Frame sides must be multiples of {multiple}, got {width}x{height}.")
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if not isinstance(text, str):
            raise InputError(f"{name} must be a string; got {type(text).__name__}.")
    if inverted_latents is None and not isinstance(source_prompt, str):
        raise InputError("source_prompt must be a string describing the input frames.")
    max_steps = pipe.scheduler.config.num_train_timesteps
    if options.num_inference_steps > max_steps:
        raise InputError(
            f"The number of steps must be between 1 and {max_steps}; got "
            f"{options.num_inference_steps}."
        )
    if not isinstance(inversion_batch_size, int) or inversion_batch_size < 1:
        raise InputError(f"inversion_batch_size must be >= 1; got {inversion_batch_size!r}.")
    check_given_tensors(
        pipe, len(frames), height, width, depth_maps, inverted_latents, depth, masks
    )


def check_given_tensors(
    pipe,
    n: int,
    height: int,
    width: int,
    depth_maps: torch.Tensor | np.ndarray | None,
    inverted_latents: torch.Tensor | None,
    depth: torch.Tensor | None,
    masks: Sequence[np.ndarray] | None,
) -> None:
    """Depth maps, x_T, prepared conditioning and masks of the right count and shapes."""
    h, w = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
    if depth_maps is not None and (len(depth_maps) != n or np.ndim(depth_maps) not in (3, 4)):
        raise InputError(
            f"Expected {n} depth maps of shape (height, width), got an array of shape "
            f"{tuple(np.shape(depth_maps))}."
        )
    for name, tensor, shape in (
        ("inverted_latents", inverted_latents, (n, pipe.latent_channels, h, w)),
        ("depth", depth, (n, *pipe.conditioning_shape(height, width))),
    ):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise InputError(f"{name} must have shape {shape}; got {tuple(tensor.shape)}.")
    if masks is not None:
        if inverted_latents is not None:
            raise InputError(
                "A local edit (masks) inverts the frames itself (it keeps each frame's "
                "inversion trajectory); do not pass inverted_latents with masks."
            )
        shapes = {np.shape(m) for m in masks}
        if len(masks) != n or shapes != {(height, width)}:
            raise InputError(
                f"Expected {n} masks of {height}x{width} (one per frame, height x width); got "
                f"{len(masks)} of shapes {sorted(shapes)}."
            )


def check_prompt_tokens(prompt: str, tokenizer, limit: int | None = None) -> None:
    """One sentence when `prompt` is longer than a text encoder reads (`limit`, else the
    tokenizer's own context), where diffusers would silently cut it."""
    if not isinstance(prompt, str):
        raise InputError(f"A prompt must be a string; got {type(prompt).__name__}.")
    limit = limit or tokenizer.model_max_length
    n_tokens = len(tokenizer(prompt, truncation=False).input_ids)
    if n_tokens > limit:
        raise InputError(
            f"The prompt {prompt[:40]!r}... has {n_tokens} tokens; the text encoder reads at "
            f"most {limit} (including its start and end tokens): shorten it."
        )


def padded_ids(tokenizer, prompt: str, max_length: int | None = None) -> torch.Tensor:
    """(1, max_length) token ids of `prompt`, padded and cut to `max_length` (else the
    tokenizer's own context), as every text encoder here reads them."""
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
