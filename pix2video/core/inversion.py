"""DDIM steps and DDIM inversion as small pure functions (k-diffusion style).

Conventions follow the reference implementation (see docs in `ALGORITHM.md`): with N steps
over T = 1000 training steps the schedule is t = T - k, ..., k, 0 with k = T // N (the
scheduler's `steps_offset=0`). Sampling at t goes to t - k; inversion at t comes *from*
t - k, and the cumulative alpha of a negative timestep is the scheduler's
`final_alpha_cumprod`. So the first inversion step (t = 0) is a no-op up to rounding and
x_T sits at the largest schedule timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]
"""eps = predict_noise(x, t): the (guided) noise prediction of latent `x` at timestep `t`."""


def alpha_bar(
    alphas_cumprod: torch.Tensor, final_alpha_cumprod: torch.Tensor, t: int
) -> torch.Tensor:
    """Cumulative alpha at timestep `t`; negative `t` (before the first step) -> `final_alpha_cumprod`."""
    return alphas_cumprod[t] if t >= 0 else final_alpha_cumprod


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic DDIM move of `x` from noise level `alpha_from` to `alpha_to` (eta = 0).

    Returns (x at `alpha_to`, predicted clean latent x0). Sampling moves to a larger alpha,
    inversion to a smaller one; the formula is the same.
    """
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps, x0


def ddim_invert(
    predict_noise: NoisePredictor,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Walk a clean latent up the schedule to the noise that DDIM sampling maps back to it.

    `timesteps` is the sampling schedule (descending, e.g. 980..0); inversion visits it in
    ascending order. At schedule timestep t the noise is predicted at t and the latent moves
    from t - k to t. Returns x_T.
    """
    ascending = sorted(timesteps)
    step_ratio = ascending[1] - ascending[0] if len(ascending) > 1 else 1
    for i, t in enumerate(ascending):
        eps = predict_noise(x, t)
        alpha_from = alpha_bar(alphas_cumprod, final_alpha_cumprod, t - step_ratio)
        x, _ = ddim_step(x, eps, alpha_from, alphas_cumprod[t])
        if callback is not None:
            callback(i, t, x)
    return x


def ddim_sample_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    step_ratio: int,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM sampling step from t to t - k: returns (x_{t-k}, predicted x0)."""
    alpha_to = alpha_bar(alphas_cumprod, final_alpha_cumprod, t - step_ratio)
    return ddim_step(x, eps, alphas_cumprod[t], alpha_to)
