"""The guided latent update: pull each frame towards the previous frame's prediction.

After a DDIM step of frame i >= 1, with x0 the step's predicted clean latent and x0_prev the
previous frame's prediction, the new latent moves against the gradient of
w * mean((x0_prev - x0)^2) taken with respect to x0 (not through the UNet):

    x_{t-1} <- x_{t-1} - w * 2 * (x0 - x0_prev) / N,   N = number of latent elements.

The reference applies w = 100 during the first half of the steps (indices 0..25 of 50),
when the layout is decided; guiding later steps lowers image quality.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:  # torch is not needed to validate options (the CLI does that before importing it)
    import torch


def guided_latent_update(
    latent: torch.Tensor, x0: torch.Tensor, x0_target: torch.Tensor, weight: float
) -> torch.Tensor:
    """One gradient step on w * mean((x0_target - x0)^2), applied to `latent`."""
    if weight == 0:
        return latent
    return latent - weight * 2.0 * (x0 - x0_target) / x0.numel()


def default_guided_steps(num_steps: int) -> int:
    """Steps 0..num_steps//2 are guided: 26 of 50, as in the reference."""
    return num_steps // 2 + 1


def guidance_target_step(step: int, target: str) -> int:
    """Which step of the previous frame's x0 trajectory frame i is pulled towards at `step`.

    `same-step` (the reference default) -> `step`; `step:K` -> K for every guided step.
    """
    if target == "same-step":
        return step
    if target.startswith("step:"):
        try:
            return int(target.split(":", 1)[1])
        except ValueError:
            pass
    raise InputError(f"latent guidance target must be 'same-step' or 'step:K', got {target!r}.")


def latent_guidance_schedule(
    num_steps: int, weight: float, guided_steps: int | None, target: str
) -> dict[int, int]:
    """{guided step index: step of the previous frame's x0 it is pulled towards}; {} when off.

    A malformed or out-of-range `target` is an `InputError` even when guidance is off.
    """
    guidance_target_step(0, target)
    guided = default_guided_steps(num_steps) if guided_steps is None else guided_steps
    guided = min(guided, num_steps) if weight else 0
    schedule = {s: guidance_target_step(s, target) for s in range(guided)}
    if any(not 0 <= k < num_steps for k in schedule.values()):
        raise InputError(f"The latent guidance target step must be in 0..{num_steps - 1}.")
    return schedule


def needs_frame_major(schedule: dict[int, int]) -> bool:
    """True when some guided step pulls towards a *later* step of the previous frame.

    Then frame i cannot start before frame i-1 has finished, so frames must be processed one
    after another (no step-by-step order, hence no step checkpoints).
    """
    return any(target > step for step, target in schedule.items())


UNSPLITTABLE = (
    "Several workers edit the frames step by step, which a guidance target at a later step "
    "(--latent-guidance-target step:K) rules out; use one worker or 'same-step'."
)
"""Why one clip cannot be split across workers (`frame_chain`) with such a target."""
