"""The flow-matching walk (FLUX, SD3): Euler steps along a predicted velocity, and its inversion.

A rectified-flow model sees x_sigma = (1 - sigma) * x0 + sigma * noise at noise level sigma
(1 = noise, 0 = clean) and predicts the velocity v = noise - x0. So the clean latent it
implies is x0 = x - sigma * v, and a sampling step from sigma to sigma' (diffusers'
`FlowMatchEulerDiscreteScheduler.step`) is x + (sigma' - sigma) * v. The guided latent
update (`guidance.py`) needs only that x0: the method is the same on these models.

Inversion runs the same steps backwards on the same sigmas (shift included), predicting
the velocity at the timestep of the sampling step it undoes, as DDIM inversion predicts the
noise at the timestep it moves to (`inversion.ddim_invert`). Where the velocity does not
depend on x (a straight flow) invert-then-sample returns the clean latent exactly; a real
model's dependence on x is the gap, which shrinks with more steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .inversion import StepCallback

VelocityPredictor = Callable[[torch.Tensor, float], torch.Tensor]
"""v = predict(x, t): the (guided) velocity of latent `x` at model timestep `t`."""


@dataclass(frozen=True)
class FlowMatchSchedule:
    """What a flow-matching Euler walk needs from a scheduler: each sampling step's model
    timestep and the noise levels between them (the last is 0, the clean latent)."""

    timesteps: list[float]  # the model timestep of each sampling step, descending
    sigmas: torch.Tensor  # (steps + 1,) float32, descending from ~1 to 0

    @classmethod
    def from_scheduler(
        cls, scheduler, num_steps: int, device: torch.device, **set_timesteps: object
    ) -> FlowMatchSchedule:
        """The walk `scheduler` (a `FlowMatchEulerDiscreteScheduler`) takes in `num_steps`;
        `set_timesteps` passes on what its `set_timesteps` needs (FLUX's `mu`)."""
        scheduler.set_timesteps(num_steps, device=device, **set_timesteps)
        return cls(
            timesteps=[float(t) for t in scheduler.timesteps],
            sigmas=scheduler.sigmas.to(device=device, dtype=torch.float32),
        )

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError("A flow-matching schedule has one more noise level than steps.")

    def sample_step(
        self, x: torch.Tensor, model_output: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler step `step` along the velocity `model_output`: (x at the next level, x0).
        In float32 whatever the model's dtype (the scheduler arithmetic stays float32)."""
        v = model_output.float()
        sigma, sigma_next = self.sigmas[step], self.sigmas[step + 1]
        return x + (sigma_next - sigma) * v, x - sigma * v

    def invert(
        self,
        predict: VelocityPredictor,
        x: torch.Tensor,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Walk clean latents `x` up to the noise sampling maps back to them (sigma ~ 1).

        Inversion step i undoes sampling step `steps - 1 - i`: from its destination level to
        its start, with the velocity predicted at its timestep.
        """
        steps = len(self.timesteps)
        for i, step in enumerate(reversed(range(steps))):
            t = self.timesteps[step]
            v = predict(x, t).float()
            x = x + (self.sigmas[step] - self.sigmas[step + 1]) * v
            if callback is not None:
                callback(i, t, x)
        return x
