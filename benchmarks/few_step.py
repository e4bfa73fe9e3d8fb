"""Can few-step (Turbo/Lightning-style) checkpoints edit with DDIM inversion at their step count?

    python benchmarks/few_step.py --steps 1 2 4 8 50

Few-step SDXL checkpoints sample in 1-8 steps without classifier-free guidance. Pix2Video
inverts every frame with DDIM at the edit's step count, so what matters is (a) how far up
the noise schedule the inversion reaches (an edit can only change what the noise hides) and
(b) how well the inverted noise maps back to the frame (the round trip: invert with the
source prompt, sample with the same prompt, guidance 1, no injection; any error is the
inversion's, since nothing was edited). Measured on the tiny random SDXL + ControlNet of the
tests (`tests/tiny_sdxl.py`, built in code), 2 frames at 64x64: the schedule part (a) is the
checkpoint-independent DDIM arithmetic; (b) is a random model's, so only its trend with the
step count carries over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 50])
    args = parser.parse_args()
    torch.set_num_threads(2)
    from diffusers import ControlNetModel
    from test_sdxl import controls, make_frames
    from tiny_sdxl import build_sdxl, build_sdxl_controlnet

    from pix2video.pipelines.sdxl import Pix2VideoSDXLControlNetPipeline

    with tempfile.TemporaryDirectory() as tmp:
        model = build_sdxl(Path(tmp) / "sdxl")
        net = ControlNetModel.from_pretrained(build_sdxl_controlnet(Path(tmp) / "cn", seed=1))
        pipe = Pix2VideoSDXLControlNetPipeline.from_pretrained(model, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    frames = make_frames(2, seed=5)
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    latents = pipe.encode_frames(frames)
    prompt = pipe.encode_prompt("a swan on a lake")
    print("| steps | timesteps | noise level of x_T | round-trip latent error | pixels off |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        x_t = pipe.invert(latents, conditioning, prompt, steps)
        back, _ = pipe.edit(
            x_t,
            conditioning,
            prompt,
            prompt,
            num_inference_steps=steps,
            guidance_scale=1.0,
            attend="none",
            latent_guidance_weight=0.0,
        )
        error = ((back - latents).norm() / latents.norm()).item()
        decoded = pipe.decode_latents(back)
        source = pipe.decode_latents(latents)
        pixels = np.mean(
            [
                np.abs(a.astype(int) - b.astype(int)).mean()
                for a, b in zip(decoded, source, strict=True)
            ]
        )
        timesteps = pipe.timesteps(steps)
        level = (1 - pipe.scheduler.alphas_cumprod[max(timesteps)]).sqrt().item()
        shown = (
            ", ".join(map(str, timesteps))
            if steps <= 8
            else f"{timesteps[0]}, ..., {timesteps[-1]}"
        )
        print(f"| {steps} | {shown} | {level:.3f} | {error:.4f} | {pixels:.2f} grey levels |")


if __name__ == "__main__":
    main()
