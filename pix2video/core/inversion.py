"""DDIM steps and DDIM inversion as small pure functions (k-diffusion style), the `Schedule`
a walk over noise levels offers the edit loop (`DDIMSchedule` here, `FlowMatchSchedule` in
`flow_matching.py`), and the inversion of a clip's frames over a batched predictor
(`invert_frames`).

Conventions follow the reference implementation (see docs in `ALGORITHM.md`): with N steps
over T = 1000 training steps the schedule is t = T - k, ..., k, 0 with k = T // N (the
scheduler's `steps_offset=0`). Sampling at t goes to t - k; inversion at t comes *from*
t - k, and the cumulative alpha of a negative timestep is the scheduler's
`final_alpha_cumprod`. So the first inversion step (t = 0) is a no-op up to rounding and
x_T sits at the largest schedule timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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


ProgressCallback = Callable[[str, int, int], None]
"""progress(stage, done, total), stage "inversion" (frames) or "editing" (frame-steps)."""

BatchPredictor = Callable[[torch.Tensor, slice, float], torch.Tensor]
"""eps = predict(x, frames, t): the model output (noise; a flow model's velocity) of the frames
`frames` (a slice of the clip) at model timestep t, unguided."""


StepCallback = Callable[[int, float, torch.Tensor], None]
"""callback(i, t, x): the latent after inversion step i (at the level of model timestep t)."""


class Schedule(Protocol):
    """A deterministic walk between noise levels, as the edit loop and inversion use it: the
    model's timestep at each sampling step, one sampling step, and the inversion that sampling
    undoes. The model's output is what the backbone predicts (DDIM: noise; flow: velocity)."""

    @property
    def timesteps(self) -> Sequence[float]:
        """The model timestep of each sampling step, in sampling order (descending)."""
        ...

    def sample_step(
        self, x: torch.Tensor, model_output: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling step `step` of `x`: (the latent at the next level, the predicted x0)."""
        ...

    def invert(
        self,
        predict: Callable[[torch.Tensor, float], torch.Tensor],
        x: torch.Tensor,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Walk clean latents up to the noise sampling maps back to them (x_T)."""
        ...


@dataclass(frozen=True)
class DDIMSchedule:
    """What a DDIM walk needs from a scheduler: its timesteps and cumulative alphas."""

    timesteps: list[int]  # descending, e.g. 980, 960, ..., 0
    step_ratio: int
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor

    @classmethod
    def from_scheduler(cls, scheduler, num_steps: int, device: torch.device) -> DDIMSchedule:
        scheduler.set_timesteps(num_steps)
        return cls(
            timesteps=[int(t) for t in scheduler.timesteps],
            step_ratio=scheduler.config.num_train_timesteps // num_steps,
            alphas_cumprod=scheduler.alphas_cumprod.to(device),
            final_alpha_cumprod=scheduler.final_alpha_cumprod.to(device),
        )

    def sample_step(
        self, x: torch.Tensor, model_output: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM from timestep `timesteps[step]` to the next: (x, predicted x0)."""
        t = self.timesteps[step]
        return ddim_sample_step(
            x, model_output, t, self.step_ratio, self.alphas_cumprod, self.final_alpha_cumprod
        )

    def invert(
        self,
        predict: NoisePredictor,
        x: torch.Tensor,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """`ddim_invert` over this schedule."""
        return ddim_invert(
            predict, x, self.timesteps, self.alphas_cumprod, self.final_alpha_cumprod, callback
        )


def invert_frames(
    predict: BatchPredictor,
    latents: torch.Tensor,
    schedule: Schedule,
    batch_size: int = 1,
    trajectory: bool = False,
    progress: ProgressCallback | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Invert every frame's clean latent (`schedule.invert`), `batch_size` frames per call.

    Returns x_T (N, 4, h, w); with `trajectory`, also (N, steps, 4, h, w): at index s, the
    latent at the noise level that editing step s lands on (`source_trajectory`).
    """
    inverted, trajectories = [], []
    for start in range(0, len(latents), batch_size):
        chunk = slice(start, start + batch_size)

        def predict_chunk(x: torch.Tensor, t: float, chunk: slice = chunk) -> torch.Tensor:
            return predict(x, chunk, t)

        x = latents[chunk]
        levels = [x]  # the clean latent, then each inversion step's result

        def record(i: int, t: float, latent: torch.Tensor, levels: list = levels) -> None:
            levels.append(latent)

        inverted.append(schedule.invert(predict_chunk, x, record if trajectory else None))
        if trajectory:
            trajectories.append(source_trajectory(levels))
        if progress:
            progress("inversion", min(start + batch_size, len(latents)), len(latents))
    if trajectory:
        return torch.cat(inverted), torch.cat(trajectories)
    return torch.cat(inverted)


def source_trajectory(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, steps, 4, h, w) from an inversion's latents, ordered as editing visits noise levels.

    `levels` = [clean latent, after inversion step 0, ..., after the last step (x_T)], each
    (N, 4, h, w). Editing step s starts at the level inversion reached after its step
    steps-1-s and lands on the one before it: index s holds `levels[steps - 1 - s]` (the
    last step lands on the clean latent).
    """
    steps = len(levels) - 1
    return torch.stack([levels[steps - 1 - s] for s in range(steps)], dim=1)
