"""DDIM steps and DDIM inversion: closed forms, the reference schedule's conventions, exact
round trips with a constant noise predictor, and reconstruction with the real tiny UNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

from pix2video.core.edit_loop import EditCheckpoint
from pix2video.core.inversion import alpha_bar, ddim_invert, ddim_sample_step, ddim_step


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ddim_step_closed_form_scalars():
    x, eps, a_from, a_to = 0.3, -0.2, 0.5, 0.9
    out, x0 = ddim_step(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(eps, dtype=torch.float64),
        torch.tensor(a_from, dtype=torch.float64),
        torch.tensor(a_to, dtype=torch.float64),
    )
    x0_expected = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    assert math.isclose(float(x0), x0_expected, abs_tol=1e-12)
    expected = math.sqrt(a_to) * x0_expected + math.sqrt(1 - a_to) * eps
    assert math.isclose(float(out), expected, abs_tol=1e-12)


def test_ddim_step_closed_form_tensors_and_identity():
    x, eps = _rand(2, 4, 8, 8, seed=0), _rand(2, 4, 8, 8, seed=1)
    a_from, a_to = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    out, x0 = ddim_step(x, eps, a_from, a_to)
    x0_expected = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    torch.testing.assert_close(x0, x0_expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        out, a_to.sqrt() * x0_expected + (1 - a_to).sqrt() * eps, atol=1e-12, rtol=0
    )
    same, _ = ddim_step(x, eps, a_from, a_from)
    torch.testing.assert_close(same, x, atol=1e-12, rtol=0)


def test_ddim_step_there_and_back():
    x, eps = _rand(1, 4, 8, 8, seed=2).float(), _rand(1, 4, 8, 8, seed=3).float()
    a, b = torch.tensor(0.95), torch.tensor(0.05)
    y, x0_forward = ddim_step(x, eps, a, b)
    back, x0_back = ddim_step(y, eps, b, a)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(x0_back, x0_forward, atol=1e-4, rtol=0)


def test_reference_schedule_and_final_alpha(tiny_pipe):
    timesteps = tiny_pipe.timesteps(50)
    assert timesteps == list(range(980, -1, -20))
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final = tiny_pipe.scheduler.final_alpha_cumprod
    assert torch.equal(final, alphas[0])  # set_alpha_to_one=False
    assert torch.equal(alpha_bar(alphas, final, -20), final)
    assert torch.equal(alpha_bar(alphas, final, 500), alphas[500])


def test_first_inversion_step_is_a_no_op_and_schedule_is_walked_upwards(tiny_pipe):
    timesteps = tiny_pipe.timesteps(50)
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final = tiny_pipe.scheduler.final_alpha_cumprod
    x = _rand(1, 4, 8, 8, seed=4).float()
    eps = _rand(1, 4, 8, 8, seed=5).float()
    seen_t, states = [], []

    def predict(latent, t):
        seen_t.append(t)
        return eps + 0.1 * latent

    x_t = ddim_invert(
        predict, x, timesteps, alphas, final, callback=lambda i, t, s: states.append(s)
    )
    assert seen_t == list(range(0, 1000, 20))  # 0, 20, ..., 980
    assert len(states) == 50 and torch.equal(states[-1], x_t)
    assert (states[0] - x).abs().max() < 1e-6  # t=0: alphas_cumprod[0] -> itself
    assert (x_t - x).abs().max() > 0.5  # the rest of the walk does move it


def test_constant_eps_invert_then_sample_returns_the_input(tiny_pipe):
    timesteps = tiny_pipe.timesteps(50)
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final = tiny_pipe.scheduler.final_alpha_cumprod
    x = _rand(1, 4, 8, 8, seed=6).float()
    eps = _rand(1, 4, 8, 8, seed=7).float()
    x_t = ddim_invert(lambda latent, t: eps, x, timesteps, alphas, final)
    # a constant eps keeps the x0 prediction fixed, so x_T is one closed-form jump to t=980
    x0 = (x - (1 - alphas[0]).sqrt() * eps) / alphas[0].sqrt()
    torch.testing.assert_close(
        x_t, alphas[980].sqrt() * x0 + (1 - alphas[980]).sqrt() * eps, atol=1e-5, rtol=0
    )
    latent = x_t
    for t in timesteps:
        latent, pred = ddim_sample_step(latent, eps, t, 20, alphas, final)
        torch.testing.assert_close(pred, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(latent, x, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- the real tiny UNet
@pytest.fixture(scope="module")
def frame_setup(tiny_pipe):
    """A 64x64 frame, its latent, its depth and the prompts (real VAE, text encoder)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    wave = 60 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    frame = (127 + wave[..., None] + rng.integers(-20, 20, (64, 64, 3))).clip(0, 255)
    frame = frame.astype(np.uint8)
    raw_depth = torch.from_numpy((1 + xx / 64 + 0.3 * np.sin(yy / 10)).astype(np.float32))[None]
    depth = tiny_pipe.prepare_depth([frame], raw_depth)
    latent = tiny_pipe.encode_frames([frame])
    prompt = tiny_pipe.encode_prompt("a swan on a lake")
    negative = tiny_pipe.encode_prompt("")
    return latent, depth, prompt, negative


def test_real_unet_inversion_equals_diffusers_inverse_scheduler(tiny_pipe, frame_setup):
    """`invert` = diffusers' DDIMInverseScheduler (leading, offset 0, initial alpha =
    alphas_cumprod[0]) driving the same UNet on the conditional branch; one UNet call a step."""
    latent, depth, prompt, _ = frame_setup
    steps = 10
    before = tiny_pipe.unet_evaluations
    x_t = tiny_pipe.invert(latent, depth, prompt, num_inference_steps=steps)
    assert tiny_pipe.unet_evaluations - before == steps  # conditional branch only

    inverse = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    inverse.set_timesteps(steps)
    assert [int(t) for t in inverse.timesteps] == list(range(0, 1000, 100))
    x = latent.clone()
    with torch.inference_mode():
        for t in inverse.timesteps:
            eps = tiny_pipe.unet(torch.cat([x, depth], 1), t, encoder_hidden_states=prompt).sample
            x = inverse.step(eps, t, x).prev_sample
    torch.testing.assert_close(x_t, x, atol=1e-5, rtol=0)
    assert (x_t - latent).abs().max() > 0.5


def test_real_unet_round_trip_from_an_early_noise_level(tiny_pipe, frame_setup):
    """Invert, then sample back with the pipeline (same prompt, guidance 1, no injection, no
    latent guidance) starting from the inverted latent at t=100.

    The random-weight tiny UNet's noise prediction changes fast with its input (a gain of ~4:
    DDIM inversion assumes eps(x_t) ~ eps(x_{t-k})), so from the full x_T at t=980 the
    reconstruction error (~4) exceeds the distance travelled (~1.2) at any step count, also in
    float64. Near the data the approximation holds and the error shrinks with the step size.
    """
    latent, depth, prompt, negative = frame_setup
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final = tiny_pipe.scheduler.final_alpha_cumprod
    errors = {}
    for steps in (20, 50):
        timesteps = tiny_pipe.timesteps(steps)
        m = 100 // (1000 // steps)  # after inversion step m the latent sits at t = 100
        trajectory = []
        with torch.inference_mode():
            start = ddim_invert(
                lambda x, t: tiny_pipe.predict_noise(x, depth, t, prompt, 1.0),
                latent,
                timesteps[-(m + 1) :],  # only the walk 0, k, ..., 100
                alphas,
                final,
                callback=lambda i, t, x, seen=trajectory: seen.append(t),
            )
        assert trajectory == list(range(0, 101, 1000 // steps))
        rebuilt, _ = tiny_pipe.edit(
            start,
            depth,
            prompt,
            negative,
            num_inference_steps=steps,
            guidance_scale=1.0,
            attend="none",
            latent_guidance_weight=0.0,
            resume=EditCheckpoint(step=steps - 2 - m, latents=start, x0_targets={}),
        )
        travel = (start - latent).abs().max().item()
        errors[steps] = (rebuilt - latent).abs().max().item()
        print(f"{steps} steps: |x_100 - x_0| = {travel:.4f}, round-trip error {errors[steps]:.4f}")
        assert errors[steps] < 0.5 * travel
    assert errors[50] < 0.6 * errors[20]  # first-order: the error shrinks with the step size
