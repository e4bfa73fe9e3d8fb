"""DDIM as the reference configures it, and the noise estimate of a v-predicting checkpoint.

Every backbone replaces its checkpoint's scheduler with `reference_scheduler`: inversion
and editing walk the same DDIM schedule as the authors' code.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from ..errors import ModelNotAvailableError

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
"""What a checkpoint may predict: the noise, or v (converted to the noise estimate)."""


def reference_scheduler(config) -> DDIMScheduler:
    """DDIM as the reference configures it: no clipping, final alpha = alphas_cumprod[0], offset 0.

    The checkpoint's prediction type is kept (epsilon or v); any other is refused.
    """
    prediction_type = dict(config).get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelNotAvailableError(
            f"The checkpoint predicts '{prediction_type}', which DDIM inversion cannot use; "
            f"use a checkpoint that predicts {' or '.join(PREDICTION_TYPES)}."
        )
    return DDIMScheduler.from_config(
        config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )


def epsilon_from_v(v: torch.Tensor, x: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The noise estimate of a v-prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t."""
    return alpha_bar_t**0.5 * v + (1 - alpha_bar_t) ** 0.5 * x
