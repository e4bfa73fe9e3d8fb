"""The flow-matching walk (`core.flow_matching`) against diffusers' scheduler and the flow's
own algebra, and the shared inversion and edit loop over it.

The velocity fields here are analytic: a straight flow (v = noise - x0 whatever x, as a
perfect rectified-flow model predicts on its own straight paths) makes invert-then-sample
exact, so any gap is the walk's; an x-dependent field measures the inversion's own error.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pix2video.core.attention import DecoderSelfAttention
from pix2video.core.edit_loop import EditLoop
from pix2video.core.flow_matching import FlowMatchSchedule
from pix2video.core.guidance import guided_latent_update
from pix2video.core.inversion import invert_frames
from pix2video.core.options import EditOptions

STEPS = 8
SHAPE = (2, 4, 6, 6)


def sd3_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3.5's scheduler config: static shift 3."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def flux_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1 [dev]'s: the shift depends on the image's token count (`mu`)."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip


SCHEDULES = {
    "sd3": lambda steps: FlowMatchSchedule.from_scheduler(sd3_scheduler(), steps, "cpu"),
    "flux": lambda steps: FlowMatchSchedule.from_scheduler(flux_scheduler(), steps, "cpu", mu=0.8),
}


def straight_flow(x0: torch.Tensor, noise: torch.Tensor):
    """The velocity of the straight path from x0 to noise, whatever x and t."""
    return lambda x, t: noise - x0


@pytest.mark.bitwise
@pytest.mark.parametrize(
    ("make", "kwargs"), [(sd3_scheduler, {}), (flux_scheduler, {"mu": 0.8})], ids=["sd3", "flux"]
)
def test_sampling_steps_equal_diffusers_scheduler(make, kwargs):
    schedule = FlowMatchSchedule.from_scheduler(make(), STEPS, "cpu", **kwargs)
    scheduler = make()
    scheduler.set_timesteps(STEPS, **kwargs)
    assert schedule.timesteps == [float(t) for t in scheduler.timesteps]
    generator = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(SHAPE, generator=generator)
    for step, t in enumerate(scheduler.timesteps):
        v = torch.randn(SHAPE, generator=generator)
        ours, _ = schedule.sample_step(ours, v, step)
        theirs = scheduler.step(v, t, theirs).prev_sample
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_x0_and_next_latent_lie_on_the_straight_path(name):
    schedule = SCHEDULES[name](STEPS)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    for step in range(STEPS):
        sigma, sigma_next = schedule.sigmas[step], schedule.sigmas[step + 1]
        x = (1 - sigma) * x0 + sigma * noise
        nxt, predicted = schedule.sample_step(x, noise - x0, step)
        assert (predicted - x0).abs().max() < 1e-5
        assert (nxt - ((1 - sigma_next) * x0 + sigma_next * noise)).abs().max() < 1e-5
    assert schedule.sigmas[-1] == 0 and schedule.sigmas[0] == 1


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inversion_of_a_straight_flow_reaches_the_noise_and_samples_back(name):
    schedule = SCHEDULES[name](STEPS)
    generator = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    predict = straight_flow(x0, noise)
    inverted = schedule.invert(predict, x0)
    assert (inverted - noise).abs().max() < 1e-5  # sigma 1 is pure noise
    x = inverted
    for step, t in enumerate(schedule.timesteps):
        x, _ = schedule.sample_step(x, predict(x, t), step)
    assert (x - x0).abs().max() < 1e-5


def test_inversion_predicts_at_the_timestep_of_the_step_it_undoes():
    schedule = SCHEDULES["sd3"](STEPS)
    seen: list[float] = []
    x = torch.zeros(SHAPE)
    schedule.invert(lambda x, t: seen.append(t) or torch.zeros_like(x), x)
    assert seen == schedule.timesteps[::-1]


def curved_flow(x: torch.Tensor, t: float) -> torch.Tensor:
    """A velocity that depends on x (as a real model's does): inversion is then approximate."""
    return 0.3 * torch.tanh(x) + 0.01 * t / 1000


def test_reconstruction_of_a_curved_flow_improves_with_steps(report_measurement):
    """Invert then sample with the same x-dependent velocity field: the gap is the inversion's
    approximation (velocity at the neighbouring level), and it shrinks as steps grow."""
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    gaps = {}
    for steps in (8, 28, 50):
        schedule = SCHEDULES["sd3"](steps)
        x = schedule.invert(curved_flow, x0)
        for step, t in enumerate(schedule.timesteps):
            x, _ = schedule.sample_step(x, curved_flow(x, t), step)
        gaps[steps] = float((x - x0).abs().max())
    figures = " / ".join(f"{gaps[n]:.1e}" for n in (8, 28, 50))
    report_measurement("flow inversion, curved field: max gap at 8/28/50 steps", figures)
    assert gaps[50] < gaps[28] < gaps[8] < 0.1


def test_invert_frames_batches_and_orders_the_trajectory_as_editing_visits_it():
    """`invert_frames` takes any Schedule: batched equals one at a time, and trajectory index s
    holds the level editing step s lands on."""
    schedule = SCHEDULES["flux"](STEPS)
    generator = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)

    def predict(x, frames, t):
        return (noise - x0)[frames]

    one, trajectory = invert_frames(predict, x0, schedule, batch_size=1, trajectory=True)
    both = invert_frames(predict, x0, schedule, batch_size=2)
    assert torch.equal(one, both)
    assert trajectory.shape == (SHAPE[0], STEPS, *SHAPE[1:])
    for s in range(STEPS):
        sigma = schedule.sigmas[s + 1]
        expected = (1 - sigma) * x0 + sigma * noise
        assert (trajectory[:, s] - expected).abs().max() < 1e-5


def test_edit_loop_runs_the_flow_walk_with_the_guided_update_on_x0():
    """The shared loop over a flow schedule (no attention injection: a plain predictor): frame
    0 samples as the walk alone does; frame 1 at a guided step is moved by the guided update
    computed on the flow's x0 = x - sigma * v."""
    schedule = SCHEDULES["sd3"](4)
    options = EditOptions(
        num_inference_steps=4, attend="none", latent_guidance_weight=50.0
    ).with_frame_batch(1)
    generator = torch.Generator().manual_seed(5)
    start = torch.randn(SHAPE, generator=generator)
    weights = torch.tensor([0.2, -0.4]).view(2, 1, 1, 1)

    def predict(x, frames, t):
        return weights[frames] * x + t / 1000

    final, _ = EditLoop(
        predict, schedule, DecoderSelfAttention(torch.nn.Identity()), options, num_frames=2
    ).run(start)
    # frame 0, alone: the plain walk
    x = start[:1]
    for step, t in enumerate(schedule.timesteps):
        x, _ = schedule.sample_step(x, predict(x, [0], t), step)
    assert torch.equal(final[:1], x)
    # frame 1: each guided step pulls towards frame 0's x0 of the same step
    a, b = start[:1], start[1:]
    guided = options.guidance_targets
    assert guided  # the first half of the steps
    for step, t in enumerate(schedule.timesteps):
        a, x0_a = schedule.sample_step(a, predict(a, [0], t), step)
        b, x0_b = schedule.sample_step(b, predict(b, [1], t), step)
        if step in guided:
            b = guided_latent_update(b, x0_b, x0_a, options.latent_guidance_weight)
    assert (final[1:] - b).abs().max() < 1e-6
    assert (final[1:] - start[1:]).abs().max() > 1e-3
