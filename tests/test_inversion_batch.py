"""Inversion batched across frames: same x_T within the reference tolerance, fewer UNet calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pix2video.pipelines.frame_batch import default_inversion_batch

TOL_INVERTED = 5e-3  # the reference's tolerance for x_T (../shared/reference/README.md)
FRAMES = 2


@pytest.fixture(scope="module")
def reference_inputs(shared_dir):
    root = shared_dir / "reference"
    if not (root / "inputs").is_dir():
        pytest.skip("../shared/reference is not present")
    frames = [
        np.array(Image.open(root / "inputs" / f"{i:06d}.png").convert("RGB")) for i in range(FRAMES)
    ]
    depth = np.stack([np.load(root / "inputs" / f"{i:06d}.npy") for i in range(FRAMES)])
    x_t = np.concatenate(
        [np.load(root / "default" / "inverted" / f"{i:06d}.npy") for i in range(FRAMES)]
    )
    return frames, depth, x_t


def test_batched_inversion_matches_unbatched_and_the_reference(tiny_pipe, reference_inputs):
    frames, depth_maps, reference_x_t = reference_inputs
    depth = tiny_pipe.prepare_depth(frames, depth_maps)
    latents = tiny_pipe.encode_frames(frames)
    embedding = tiny_pipe.encode_prompt("a black swan on the lake")
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        one_by_one = tiny_pipe.invert(latents, depth, embedding, 50, batch_size=1)
        n_single = len(calls)
        batched = tiny_pipe.invert(latents, depth, embedding, 50, batch_size=FRAMES)
    finally:
        hook.remove()
    assert n_single == 50 * FRAMES and calls[:n_single] == [1] * n_single
    assert calls[n_single:] == [FRAMES] * 50  # one UNet call per step for all frames
    assert (batched - one_by_one).abs().max() <= TOL_INVERTED
    assert np.abs(batched.numpy() - reference_x_t).max() <= TOL_INVERTED
    assert not torch.equal(batched[0], batched[1])  # rows are different frames


def test_default_inversion_batch_by_device():
    assert default_inversion_batch("cpu") == 1
    assert default_inversion_batch("cuda") == 8
    assert default_inversion_batch(torch.device("cuda", 1)) == 8
