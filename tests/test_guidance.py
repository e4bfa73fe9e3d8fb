"""The guided latent update: closed form, autograd, schedule of guided steps, and its effect
inside the pipeline (only frames >= 1, towards the PREVIOUS frame's predicted x0)."""

from __future__ import annotations

import pytest
import torch

from pix2video.core.guidance import default_guided_steps, guidance_target_step, guided_latent_update
from pix2video.core.inversion import ddim_sample_step
from pix2video.errors import InputError

STEPS = 4


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("weight", [100.0, 3.5])
def test_update_matches_closed_form_and_autograd(weight):
    x, x0, x0_prev = (_rand(1, 4, 8, 8, seed=s) for s in (0, 1, 2))
    n = x0.numel()
    out = guided_latent_update(x, x0, x0_prev, weight)
    torch.testing.assert_close(out, x - weight * 2 * (x0 - x0_prev) / n, atol=1e-6, rtol=0)

    x0_var = x0.clone().requires_grad_(True)
    loss = weight * ((x0_prev - x0_var) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, x0_var)
    torch.testing.assert_close(out, x - grad, atol=1e-6, rtol=0)
    assert (out - x).abs().max() > 1e-3  # the update is not a no-op


def test_update_at_reference_resolution_uses_200_over_16384():
    x = torch.zeros(1, 4, 64, 64)  # 512x512 frames: N = 16384
    out = guided_latent_update(x, torch.ones_like(x), torch.zeros_like(x), 100.0)
    torch.testing.assert_close(out, torch.full_like(x, -200 / 16384), atol=1e-9, rtol=0)


def test_weight_zero_returns_input_unchanged():
    x, x0, x0_prev = (_rand(1, 4, 8, 8, seed=s) for s in (3, 4, 5))
    assert torch.equal(guided_latent_update(x, x0, x0_prev, 0.0), x)
    assert torch.equal(guided_latent_update(x, x0, x0, 100.0), x)  # no gap, no pull


def test_default_guided_steps():
    assert default_guided_steps(50) == 26  # indices 0..25, as in the reference
    assert default_guided_steps(4) == 3
    assert default_guided_steps(1) == 1
    assert default_guided_steps(10) == 6


def test_guidance_target_step():
    assert [guidance_target_step(s, "same-step") for s in range(5)] == [0, 1, 2, 3, 4]
    assert [guidance_target_step(s, "step:2") for s in range(5)] == [2] * 5
    assert guidance_target_step(0, "step:17") == 17


@pytest.mark.parametrize("bad", ["", "same", "step:", "step:x", "step:1.5", "steps:2", "Same-Step"])
def test_guidance_target_step_rejects_bad_strings(bad):
    with pytest.raises(ValueError, match="same-step"):
        guidance_target_step(0, bad)


# ---------------------------------------------------------------------------- in the pipeline
@pytest.fixture(scope="module")
def setup(tiny_pipe):
    n = 3
    x_t = _rand(n, 4, 8, 8, seed=10)
    depth = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(11)) * 2 - 1
    prompt = tiny_pipe.encode_prompt("a watercolor painting of a swan")
    negative = tiny_pipe.encode_prompt("")
    return x_t, depth, prompt, negative


def _edit(pipe, setup, **kwargs):
    x_t, depth, prompt, negative = setup
    kwargs.setdefault("num_inference_steps", STEPS)
    final, _ = pipe.edit(x_t, depth, prompt, negative, **kwargs)
    return final


@pytest.mark.bitwise
def test_guidance_changes_only_frames_after_the_anchor(tiny_pipe, setup):
    guided = _edit(tiny_pipe, setup, latent_guidance_weight=100.0)
    free = _edit(tiny_pipe, setup, latent_guidance_weight=0.0)
    assert torch.equal(guided[0], free[0])
    for i in (1, 2):
        assert (guided[i] - free[i]).abs().max() > 1e-3


@pytest.mark.bitwise
def test_zero_guided_steps_equals_weight_zero(tiny_pipe, setup):
    free = _edit(tiny_pipe, setup, latent_guidance_weight=0.0)
    no_steps = _edit(tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_steps=0)
    assert torch.equal(free, no_steps)
    one_step = _edit(tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_steps=1)
    assert not torch.equal(free, one_step)


def test_guided_step_pulls_towards_previous_frame_x0(tiny_pipe, setup):
    """After step 0 (no injection), frame i's latent is its DDIM step moved by the gradient
    towards frame i-1's x0 at step 0 (the previous frame, not the anchor)."""
    x_t, depth, prompt, negative = setup
    checkpoints = []
    _edit(
        tiny_pipe,
        setup,
        attend="none",
        latent_guidance_weight=100.0,
        on_step_end=checkpoints.append,
    )
    assert [c.step for c in checkpoints] == list(range(STEPS))
    timesteps = tiny_pipe.timesteps(STEPS)
    alphas = tiny_pipe.scheduler.alphas_cumprod
    final_alpha = tiny_pipe.scheduler.final_alpha_cumprod
    text = torch.cat([negative, prompt])
    stepped, x0 = [], []
    with torch.inference_mode():
        for i in range(3):
            eps = tiny_pipe.predict_noise(x_t[i : i + 1], depth[i : i + 1], timesteps[0], text, 7.5)
            latent, pred = ddim_sample_step(
                x_t[i : i + 1], eps, timesteps[0], 1000 // STEPS, alphas, final_alpha
            )
            stepped.append(latent)
            x0.append(pred)
    after_step0 = checkpoints[0].latents
    torch.testing.assert_close(after_step0[0:1], stepped[0], atol=1e-5, rtol=0)
    for i in (1, 2):
        expected = stepped[i] - 100.0 * 2 * (x0[i] - x0[i - 1]) / x0[i].numel()
        torch.testing.assert_close(after_step0[i : i + 1], expected, atol=1e-5, rtol=0)
        # towards the anchor would be a different latent for frame 2
        if i == 2:
            to_anchor = stepped[i] - 100.0 * 2 * (x0[i] - x0[0]) / x0[i].numel()
            assert (after_step0[i : i + 1] - to_anchor).abs().max() > 1e-3


@pytest.mark.bitwise
def test_fixed_target_step_in_pipeline(tiny_pipe, setup):
    same = _edit(tiny_pipe, setup, latent_guidance_weight=100.0)
    fixed = _edit(tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_target="step:0")
    assert torch.equal(same[0], fixed[0])
    assert (same[1:] - fixed[1:]).abs().max() > 1e-4
    with pytest.raises(InputError, match="target step"):
        _edit(
            tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_target=f"step:{STEPS}"
        )
    with pytest.raises(InputError, match="target step"):
        _edit(tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_target="step:-1")


def test_malformed_target_is_an_input_error(tiny_pipe, setup):
    with pytest.raises(InputError):
        _edit(tiny_pipe, setup, latent_guidance_weight=100.0, latent_guidance_target="bogus")
    with pytest.raises(InputError, match="same-step"):
        _edit(tiny_pipe, setup, latent_guidance_weight=0.0, latent_guidance_target="bogus")
