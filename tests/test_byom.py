"""Bring your own model through the job and the command line: SD 1.5 checkpoints (folder or
single file) with ControlNets, control kinds, LoRAs, depth models, cache keys and settings
errors. What SD 1.5 and SDXL do alike (the CLI and the job agreeing, single-file edits,
LoRAs, resuming, masks, one-sentence errors) is in `test_backbones.py`, per family.

Tiny random models built in code (`tiny_sd15.py`), examples/cockatoo.mp4 at 64 px, 2 frames,
2 steps; comparisons are bitwise (same machine, same code path).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from support import COCKATOO, png_frames
from test_backbones import run, sd15, settings

from pix2video import EditSettings, edit_clip
from pix2video.cli import main
from pix2video.errors import InputError
from pix2video.job import PipelineCache
from pix2video.settings import parse_lora

FRAMES = 2


# --------------------------------------------------------------------------- settings
def test_parse_lora():
    assert parse_lora("style.safetensors") == ("style.safetensors", 1.0)
    assert parse_lora("./x/style.safetensors:0.8") == ("./x/style.safetensors", 0.8)
    assert parse_lora("user/repo:0") == ("user/repo", 0.0)
    assert parse_lora("C:/loras/style.safetensors") == ("C:/loras/style.safetensors", 1.0)
    with pytest.raises(InputError, match="must be a finite number"):
        parse_lora("x:nan")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"control": ()}, "one --control .* per --controlnet"),
        ({"controlnet": (), "control": ("canny",)}, "--control needs a --controlnet"),
        ({"control_scale": (1.0, 2.0)}, "one --control-scale per --controlnet"),
        ({"canny_low": 300, "canny_high": 200}, "must not exceed --canny-high"),
        ({"lora": (":0.5",)}, "names no LoRA"),
    ],
)
def test_backbone_settings_are_checked_in_one_sentence(tmp_path, tiny_sd15, changes, message):
    with pytest.raises(InputError, match=message):
        settings(tmp_path, sd15(tiny_sd15), **changes).validate()


def test_config_file_lists_become_tuples(tmp_path, tiny_sd15):
    s = EditSettings.from_mapping(
        {"input": "a.mp4", "prompt": "p", "output": "o.mp4", "controlnet": ["a", "b"],
         "control": "canny", "control-scale": [0.5, 1], "lora": "x.safetensors:0.3"}
    )  # fmt: skip
    assert s.controlnet == ("a", "b") and s.control == ("canny",)
    assert s.control_scale == (0.5, 1) and s.loras == (("x.safetensors", 0.3),)


def test_pipeline_cache_keys_include_controlnets_and_loras(tiny_sd15, tiny_lora):
    cache = PipelineCache(size=4)
    model, (cn1, cn2) = str(tiny_sd15.model), (str(p) for p in tiny_sd15.controlnets)
    plain = cache.get(model, "cpu", "float32", controlnets=(cn1,))
    assert cache.get(model, "cpu", "float32", controlnets=(cn1,)) is plain
    other_net = cache.get(model, "cpu", "float32", controlnets=(cn2,))
    lora = cache.get(model, "cpu", "float32", controlnets=(cn1,), loras=((str(tiny_lora), 0.5),))
    assert len({id(plain), id(other_net), id(lora)}) == 3
    weight = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    fused, base = lora.unet.state_dict()[weight], plain.unet.state_dict()[weight]
    assert not torch.equal(fused, base)  # fused into the weights, not a per-step adapter
    assert not any("lora" in name for name in lora.unet.state_dict())


# --------------------------------------------------------------------------- edits
def test_single_file_checkpoint_loads_the_folders_weights(tiny_sd15):
    from pix2video import load_pipeline

    folder = load_pipeline(str(tiny_sd15.model), controlnets=[str(tiny_sd15.controlnets[0])])
    single = load_pipeline(
        str(tiny_sd15.single_file),
        controlnets=[str(tiny_sd15.controlnets[0])],
        model_config=str(tiny_sd15.model),
    )
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert sorted(got) == sorted(want), name
        for key, value in want.items():
            # after the layout conversion: the same values (a reshape at most)
            assert torch.equal(got[key].reshape(value.shape), value), f"{name}.{key}"


def test_control_frames_from_a_folder(tmp_path, tiny_sd15, pipelines):
    folder = tmp_path / "controls"
    folder.mkdir()
    for i in range(FRAMES):
        image = np.zeros((32, 64, 3), np.uint8)
        image[:, 8 * i : 8 * i + 16] = 255
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    _, from_files = run(tmp_path, sd15(tiny_sd15), pipelines, "files", control=(str(folder),))
    _, from_canny = run(tmp_path, sd15(tiny_sd15), pipelines, "canny")
    assert len(from_files) == FRAMES and not np.array_equal(from_files[0], from_canny[0])


@pytest.mark.bitwise
def test_depth_model_replaces_sd2_depths_estimator(tmp_path, tiny_sd15, pipelines):
    from pix2video.pipelines.control import DepthEstimator

    estimator = DepthEstimator(str(tiny_sd15.depth_model))
    frame = np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    assert np.array_equal(estimator(frame).numpy(), estimator(frame.copy()).numpy())
    own = settings(
        tmp_path, sd15(tiny_sd15), model="tiny", controlnet=(), control=(), output=tmp_path / "own"
    )
    other = own.replace(output=tmp_path / "da", depth_model=str(tiny_sd15.depth_model))
    edit_clip(own, pipelines=pipelines)
    result = edit_clip(other, pipelines=pipelines)
    assert result.depth_computed == FRAMES  # the depth model is in the depth keys
    assert not np.array_equal(png_frames(own.output)[0], png_frames(other.output)[0])


# --------------------------------------------------------------------------- errors
# --------------------------------------------------------------------------- the web UI's server options
def test_ui_server_options_choose_the_model_for_every_job(tmp_path, tiny_sd15):
    lora = tmp_path / "style.safetensors"  # only parsed here
    pytest.importorskip("gradio")
    from pix2video.ui import ServerOptions
    from pix2video.ui.form import settings_from_form

    cn = str(tiny_sd15.controlnets[0])
    options = ServerOptions(
        model=str(tiny_sd15.model),
        controlnet=(cn,),
        control=("canny",),
        control_scale=(0.7,),
        lora=(f"{lora}:0.5",),
        examples=[],
    )
    s = settings_from_form({"video": str(COCKATOO), "prompt": "p"}, options, tmp_path / "o.mp4")
    assert (s.model, s.controlnet, s.control, s.control_scales) == (
        str(tiny_sd15.model),
        (cn,),
        ("canny",),
        (0.7,),
    )
    assert s.loras == ((str(lora), 0.5),)


def test_ui_refuses_a_controlnet_without_its_control_before_starting():
    result = CliRunner().invoke(main, ["ui", "--controlnet", "some/controlnet", "--port", "7999"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: Give one --control") and result.output.count("\n") == 1
