"""Single-file SD3/SD3.5 and FLUX checkpoints (`pipelines/transformer_checkpoints.py`), on
tiny random models built in code, offline.

- an SD3 transformer saved in Stability's original layout (`model.diffusion_model.` keys,
  fused qkv: `tiny_sd3.sd3_transformer_to_original`, checked against diffusers' own
  conversion by a round trip) loads with `--model-config` to the folder's weights and model
  output, bitwise; so does a diffusers-layout file;
- a FLUX transformer single file (diffusers' layout; the original BFL layout's conversion in
  diffusers assumes the full 3072 width, so no tiny file of it can be made) gives the same
  pipeline as the folder, FLUX.1 Depth and FLUX.1 [dev] + ControlNet alike; it is told a
  FLUX (reads its control itself or not) from its header, as the job's geometry;
- a single file without `--model-config` whose model diffusers cannot tell, or with the
  configs of another size, is one sentence.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from pix2video.errors import ModelNotAvailableError
from pix2video.models import is_flux_checkpoint, reads_control_itself, single_file_family
from pix2video.pipelines.checkpoints import is_sd3_checkpoint, load_pipeline, model_geometry


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    from tiny_flux import build_flux_control, build_flux_controlnet
    from tiny_sd3 import build_sd3, build_sd3_controlnet

    root = tmp_path_factory.mktemp("single-files")
    flux_dev = build_flux_control(root / "flux-dev", control=False)
    return SimpleNamespace(
        root=root,
        sd3=build_sd3(root / "sd3"),
        sd3_controlnet=build_sd3_controlnet(root / "sd3-cn", seed=1),
        flux_depth=build_flux_control(root / "flux-depth"),
        flux_dev=flux_dev,
        flux_controlnet=build_flux_controlnet(flux_dev, root / "flux-cn"),
    )


def transformer_state(folder, cls) -> dict:
    return cls.from_pretrained(folder, subfolder="transformer").state_dict()


def same_weights(a, b) -> bool:
    sa, sb = a.transformer.state_dict(), b.transformer.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_sentence(message: str) -> bool:
    return re.search(r"[.!?]\s+[A-Z]", message) is None and message.endswith(".")


def test_the_original_sd3_layout_is_diffusers_conversion_inverted(tiny):
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_sd3_transformer_checkpoint_to_diffusers,
    )
    from tiny_sd3 import sd3_transformer_to_original

    state = transformer_state(tiny.sd3, SD3Transformer2DModel)
    back = convert_sd3_transformer_checkpoint_to_diffusers(sd3_transformer_to_original(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_an_sd3_single_file_equals_the_folder(tiny, layout):
    from diffusers import SD3Transformer2DModel
    from tiny_sd3 import sd3_transformer_to_original

    state = transformer_state(tiny.sd3, SD3Transformer2DModel)
    path = tiny.root / f"sd3.5-{layout}.safetensors"
    save_file(sd3_transformer_to_original(state) if layout == "original" else state, path)
    assert single_file_family(str(path)) == "sd3" and is_sd3_checkpoint(str(path))
    assert model_geometry(str(path)) == model_geometry(str(tiny.sd3)) == (16, 16)
    nets = [str(tiny.sd3_controlnet)]
    folder = load_pipeline(str(tiny.sd3), controlnets=nets)
    single = load_pipeline(str(path), controlnets=nets, model_config=str(tiny.sd3))
    assert type(single) is type(folder) and same_weights(single, folder)
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    control = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    text = folder.encode_prompt("a swan")
    with torch.inference_mode():
        ours = single.model_output(x, control, 500.0, text, 1)
        theirs = folder.model_output(x, control, 500.0, text, 1)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["depth", "dev+controlnet"])
def test_a_flux_transformer_single_file_equals_the_folder(tiny, kind):
    from diffusers import FluxTransformer2DModel

    folder_path = tiny.flux_depth if kind == "depth" else tiny.flux_dev
    path = tiny.root / f"flux1-{kind}.safetensors"
    save_file(transformer_state(folder_path, FluxTransformer2DModel), path)
    assert is_flux_checkpoint(str(path)) and single_file_family(str(path)) == "flux"
    assert reads_control_itself(str(path)) == (kind == "depth")
    assert model_geometry(str(path)) == model_geometry(str(folder_path)) == (4, 16)
    nets = [] if kind == "depth" else [str(tiny.flux_controlnet)]
    folder = load_pipeline(str(folder_path), controlnets=nets)
    single = load_pipeline(str(path), controlnets=nets, model_config=str(folder_path))
    assert type(single) is type(folder) and same_weights(single, folder)


def test_single_file_refusals_are_one_sentence(tiny):
    from diffusers import FluxTransformer2DModel

    path = tiny.root / "unknown-flux.safetensors"
    save_file(transformer_state(tiny.flux_dev, FluxTransformer2DModel), path)
    with pytest.raises(ModelNotAvailableError, match=r"diffusers cannot tell from its keys") as e:
        load_pipeline(str(path), controlnets=[str(tiny.flux_controlnet)])
    assert one_sentence(str(e.value)), str(e.value)
    with pytest.raises(ModelNotAvailableError, match=r"could not be loaded with the configs") as e:
        load_pipeline(str(path), controlnets=[str(tiny.sd3_controlnet)], model_config=str(tiny.sd3))
    assert one_sentence(str(e.value)), str(e.value)


def test_cli_edits_with_a_flux_single_file_as_with_its_folder(tiny, tmp_path):
    """`--model flux1-dev.safetensors --model-config FOLDER --controlnet CN`: the frames of
    the folder's edit."""
    from click.testing import CliRunner
    from diffusers import FluxTransformer2DModel
    from support import COCKATOO, png_frames

    from pix2video.cli import main

    path = tmp_path / "flux1-dev.safetensors"
    save_file(transformer_state(tiny.flux_dev, FluxTransformer2DModel), path)
    outputs = {}
    for name, model in {
        "folder": [tiny.flux_dev],
        "file": [path, "--model-config", tiny.flux_dev],
    }.items():
        args = [COCKATOO, "-p", "a red car", "--source-prompt", "a swan", "--model", *model]
        args += ["--controlnet", tiny.flux_controlnet, "--control", "canny", "--size", "64x32"]
        args += ["--max-frames", 2, "--steps", 2, "--dtype", "float32", "-q", "--no-cache"]
        result = CliRunner().invoke(main, ["edit", *map(str, args), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        outputs[name] = png_frames(tmp_path / name)
    assert len(outputs["file"]) == 2
    assert all((a == b).all() for a, b in zip(outputs["file"], outputs["folder"], strict=True))
