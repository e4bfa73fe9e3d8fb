"""SD3/SD3.5 with SD3 ControlNets (`pipelines/sd3.py`) and the injection in joint attention
(`core/joint_attention.py`), on tiny random models built in code (`tiny_sd3.py`), offline.

- the base path (injection and guided update off) equals diffusers'
  `StableDiffusion3ControlNetPipeline` from the same noise, with one, two, an InstantX-kind
  and an SD3.5-kind ControlNet; the gaps are reported;
- invert-then-sample returns the source latents: the gap at 8/28/50 steps is reported
  and bounded;
- the joint-attention processor: no references = diffusers' joint attention (bitwise);
  references = the closed form; frame batches equal one frame at a time (float64) in every
  attend mode, and two workers one process; injection is live; `inject_blocks` chooses the
  blocks; step/frame order and resume are bitwise; masks keep the outside; LoRA scale 0 is none;
- `load_pipeline` picks the SD3 pipeline for a saved folder and refuses Turbo, ControlNets
  of another family or for inpainting; bad inputs are one sentence;
- the CLI equals the job and its preview, `--inject-blocks` is another edit, `--workers 2`
  equals one process.
"""

from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from diffusers import StableDiffusion3ControlNetPipeline
from diffusers.models.attention_processor import JointAttnProcessor2_0
from diffusers.models.controlnets.controlnet_sd3 import SD3ControlNetModel
from PIL import Image
from support import COCKATOO, frame_gap, make_frames, png_frames

from pix2video import EditSettings, edit_clip, preview_anchor
from pix2video.cli import main
from pix2video.core.attention import ATTEND_MODES, FeatureStore, reference_plan
from pix2video.core.joint_attention import (
    JointAttentionInjection,
    JointCrossFrameAttnProcessor,
    default_inject_blocks,
)
from pix2video.errors import InputError, ModelNotAvailableError
from pix2video.pipelines.checkpoints import is_sd3_checkpoint, load_pipeline
from pix2video.pipelines.control import canny_image
from pix2video.pipelines.sd3 import Pix2VideoSD3ControlNetPipeline

EDIT, SCENE = "a red sports car", "a swan on a lake"
HEIGHT, WIDTH = 32, 64  # latents 4 x 8, 2 x 4 image tokens of the patch-2 transformer
LATENT = (16, HEIGHT // 8, WIDTH // 8)
REFERENCE_STEPS, GUIDANCE = 3, 5.0
TOLERANCE = 1e-5  # ours vs diffusers (float32): measured ~2e-6, reported; diffusers VAE-encodes
# the control image in a batch of 2 (CFG), we in a batch of 1: that alone moves the control
# latents by 2.2e-6 on this CPU


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory) -> SimpleNamespace:
    """The tiny SD3.5-topology model and SD3 ControlNets: two plain, an InstantX-kind one and
    one of Stability's SD3.5 kind."""
    from tiny_sd3 import build_sd3, build_sd3_controlnet

    root = tmp_path_factory.mktemp("tiny-sd3")
    return SimpleNamespace(
        model=build_sd3(root / "sd3"),
        controlnets=[build_sd3_controlnet(root / f"controlnet{i}", seed=i) for i in (1, 2)],
        instantx=build_sd3_controlnet(root / "instantx", seed=3, instantx=True),
        sd35=build_sd3_controlnet(root / "sd35", seed=4, sd35=True),
    )


def our_pipeline(models, *controlnets) -> Pix2VideoSD3ControlNetPipeline:
    nets = [SD3ControlNetModel.from_pretrained(c) for c in controlnets]
    pipe = Pix2VideoSD3ControlNetPipeline.from_pretrained(models.model, controlnet=nets)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny_sd3) -> Pix2VideoSD3ControlNetPipeline:
    return our_pipeline(tiny_sd3, tiny_sd3.controlnets[0])


def controls(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [canny_image(f, 100, 200) for f in frames]


def noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, *LATENT, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------- base path
def our_base_path(pipe, x_t, conditioning, negative: str = "") -> torch.Tensor:
    """Our pipeline without injection or guided update: diffusers' path, from `x_t`."""
    final, _ = pipe.edit(
        x_t,
        conditioning,
        pipe.encode_prompt(EDIT),
        pipe.encode_negative_prompt(negative),
        num_inference_steps=REFERENCE_STEPS,
        guidance_scale=GUIDANCE,
        attend="none",
        latent_guidance_weight=0.0,
    )
    return final


def diffusers_path(pipe, controlnet, images, x_t, scale, **call) -> torch.Tensor:
    """diffusers' `StableDiffusion3ControlNetPipeline` on `pipe`'s components: final latents."""
    theirs = StableDiffusion3ControlNetPipeline(
        transformer=pipe.transformer,
        scheduler=pipe.scheduler,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2,
        text_encoder_3=pipe.text_encoder_3,
        tokenizer_3=pipe.tokenizer_3,
        controlnet=controlnet,
    )
    theirs.set_progress_bar_config(disable=True)
    return theirs(
        EDIT,
        control_image=images,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=REFERENCE_STEPS,
        guidance_scale=GUIDANCE,
        latents=x_t,
        controlnet_conditioning_scale=scale,
        output_type="latent",
        **call,
    ).images


def test_anchor_frame_equals_diffusers_sd3_controlnet_pipeline(
    pipe, tiny_sd3, posterior_mean, report_measurement
):
    frame = make_frames(1, HEIGHT, WIDTH)[0]
    control = controls([frame])
    x_t = noise(1, seed=0)
    pipe.set_controlnet_scales([0.8])
    conditioning = pipe.prepare_conditioning([frame], control_images=control)
    assert conditioning.shape == (1, *LATENT)
    ours = our_base_path(pipe, x_t, conditioning)
    image = Image.fromarray(control[0])
    theirs = diffusers_path(pipe, pipe.controlnet, image, x_t, 0.8)
    gap = (ours - theirs).abs().max().item()
    report_measurement(
        "SD3 anchor vs diffusers (1 ControlNet, 3 steps), max |dlatent|", f"{gap:.2e}"
    )
    assert gap < TOLERANCE, gap
    # a negative prompt is encoded by all three text encoders as diffusers does
    ours_negative = our_base_path(pipe, x_t, conditioning, negative="blurry")
    theirs_negative = diffusers_path(
        pipe, pipe.controlnet, image, x_t, 0.8, negative_prompt="blurry"
    )
    assert (ours_negative - theirs_negative).abs().max().item() < TOLERANCE
    assert (ours_negative - ours).abs().max().item() > 1e-3
    # the ControlNet matters: another control image moves the result far more than the gap
    other = pipe.prepare_conditioning([frame], control_images=[np.zeros_like(control[0])])
    assert (our_base_path(pipe, x_t, other) - ours).abs().max().item() > 1000 * max(gap, 1e-7)
    pipe.set_controlnet_scales([1.0])


def test_two_controlnets_and_the_instantx_and_sd35_kinds_equal_diffusers(
    tiny_sd3, posterior_mean, report_measurement
):
    frame = make_frames(1, HEIGHT, WIDTH, seed=4)[0]
    edges, other = canny_image(frame, 50, 150), canny_image(frame[::-1].copy(), 100, 200)
    x_t = noise(1, seed=1)
    multi = our_pipeline(tiny_sd3, *tiny_sd3.controlnets)
    multi.set_controlnet_scales([0.7, 1.2])
    conditioning = multi.prepare_conditioning([frame], control_images=[[edges, other]])
    assert conditioning.shape == (1, 2 * LATENT[0], *LATENT[1:])
    ours = our_base_path(multi, x_t, conditioning)
    images = [Image.fromarray(edges), Image.fromarray(other)]
    theirs = diffusers_path(multi, multi.controlnet, images, x_t, [0.7, 1.2])
    gaps = {"two ControlNets": (ours - theirs).abs().max().item()}
    evaluations = multi.controlnet_evaluations
    our_base_path(multi, x_t, conditioning)
    assert multi.controlnet_evaluations - evaluations == REFERENCE_STEPS * 2 * 2
    # InstantX's kind: zero pooled text, control latents without the VAE's shift
    instantx = our_pipeline(tiny_sd3, tiny_sd3.instantx)
    conditioning = instantx.prepare_conditioning([frame], control_images=[edges])
    ours = our_base_path(instantx, x_t, conditioning)
    theirs = diffusers_path(instantx, instantx.controlnet, images[0], x_t, 1.0)
    gaps["InstantX-kind ControlNet"] = (ours - theirs).abs().max().item()
    # Stability's SD3.5 kind: no text, the transformer's position embedding
    sd35 = our_pipeline(tiny_sd3, tiny_sd3.sd35)
    conditioning = sd35.prepare_conditioning([frame], control_images=[edges])
    ours = our_base_path(sd35, x_t, conditioning)
    theirs = diffusers_path(sd35, sd35.controlnet, images[0], x_t, 1.0)
    gaps["SD3.5-kind ControlNet"] = (ours - theirs).abs().max().item()
    for name, gap in gaps.items():
        report_measurement(f"SD3 anchor vs diffusers ({name}), max |dlatent|", f"{gap:.2e}")
    assert max(gaps.values()) < TOLERANCE, gaps


# ---------------------------------------------------------------------------- inversion
RECONSTRUCTION_BOUND = {8: 0.3, 28: 0.1, 50: 0.05}  # max |dlatent|; measured 0.14, 0.037, 0.020


def test_invert_then_sample_returns_the_source_latents(pipe, report_measurement):
    """Inversion (source prompt, guidance 1) then sampling with the same prompt and guidance:
    the frame's own latents come back, closer with more steps."""
    frame = make_frames(1, HEIGHT, WIDTH, seed=2)[0]
    conditioning = pipe.prepare_conditioning([frame], control_images=controls([frame]))
    source = pipe.encode_frames([frame])
    text = pipe.encode_prompt(SCENE)
    gaps = {}
    for steps in RECONSTRUCTION_BOUND:
        x_t = pipe.invert(source, conditioning, text, steps)
        back, _ = pipe.edit(
            x_t,
            conditioning,
            text,
            text,
            num_inference_steps=steps,
            guidance_scale=1.0,
            attend="none",
            latent_guidance_weight=0.0,
        )
        gaps[steps] = (back - source).abs().max().item()
        report_measurement(
            f"SD3 invert-then-sample at {steps} steps, max |dlatent| (latents' std "
            f"{source.std().item():.2f})",
            f"{gaps[steps]:.2e}",
        )
    assert all(gaps[s] < bound for s, bound in RECONSTRUCTION_BOUND.items()), gaps
    assert gaps[50] < gaps[8], gaps


# ---------------------------------------------------------------------------- joint attention
def joint_attention_inputs(pipe, frames: int, dtype=torch.float64):
    """A joint block's attention and inputs: (attn, image rows, text rows), CFG-branch-major."""
    attn = pipe.transformer.transformer_blocks[1].attn
    g = torch.Generator().manual_seed(7)
    image = torch.randn(2 * frames, 8, attn.query_dim, generator=g, dtype=dtype)
    text = torch.randn(2 * frames, 5, attn.query_dim, generator=g, dtype=dtype)
    return attn, image, text


@pytest.fixture(scope="module")
def pipe64(tiny_sd3) -> Pix2VideoSD3ControlNetPipeline:
    """The tiny SD3 pipeline in float64 (batch-invariant CPU kernels)."""
    return our_pipeline(tiny_sd3, tiny_sd3.controlnets[0]).to(dtype=torch.float64)


def test_a_frame_without_references_gets_diffusers_joint_attention(pipe64):
    attn, image, text = joint_attention_inputs(pipe64, frames=1)
    store = FeatureStore(reference_plan(1, "anchor+previous"))
    processor = JointCrossFrameAttnProcessor(store, "layer")
    with torch.inference_mode(), store.frame_step(0, 0):
        ours = processor(attn, image, text)
    theirs = JointAttnProcessor2_0()(attn, image, text)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_references_add_their_image_tokens_to_the_image_queries_only(pipe64):
    """Frame 1 attends to frame 0; with frame 0's input equal to frame 1's, its image keys
    appear twice: the closed form is joint attention with log 2 added to the image keys'
    logits. Its text queries attend to its own tokens only: plain joint attention."""
    attn, image, text = joint_attention_inputs(pipe64, frames=2)
    image[[1, 3]] = image[[0, 2]]  # rows (branch, frame): frame 1 = frame 0 in both branches
    store = FeatureStore(reference_plan(2, "anchor"), chunk_size=2)
    processor = JointCrossFrameAttnProcessor(store, "layer")
    with torch.inference_mode(), store.chunk_step(range(2), 0):
        image_out, text_out = processor(attn, image, text)
    rows = [1, 3]  # frame 1 in both branches
    plain_image, plain_text = JointAttnProcessor2_0()(attn, image[rows], text[rows])
    assert (text_out[rows] - plain_text).abs().max().item() < 1e-12
    assert (image_out[rows] - plain_image).abs().max().item() > 1e-3
    expected = closed_form_doubled_image_keys(attn, image[rows], text[rows])
    assert (image_out[rows] - expected).abs().max().item() < 1e-12
    assert torch.equal(
        image_out[[0, 2]], JointAttnProcessor2_0()(attn, image[[0, 2]], text[[0, 2]])[0]
    )


def closed_form_doubled_image_keys(attn, image, text) -> torch.Tensor:
    """Image-query joint attention where every image key counts twice (logit + log 2)."""

    def heads(x):
        return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

    query = attn.norm_q(heads(attn.to_q(image)))
    key = torch.cat(
        [attn.norm_k(heads(attn.to_k(image))), attn.norm_added_k(heads(attn.add_k_proj(text)))],
        dim=2,
    )
    value = torch.cat([heads(attn.to_v(image)), heads(attn.add_v_proj(text))], dim=2)
    bias = torch.zeros(key.shape[2], dtype=image.dtype)
    bias[: image.shape[1]] = torch.log(torch.tensor(2.0, dtype=image.dtype))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[None])
    return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))


def test_mmdit_x_image_attention_gets_diffusers_processor_and_reads_the_references(pipe64):
    """SD3.5 Medium's `attn2` (image tokens only): a frame without references gets diffusers'
    processor bitwise; frame 1 reading frame 0 equals diffusers' processor over frame 1's
    tokens followed by frame 0's (image queries attend to both; SD3 has no rotary
    positions), both CFG branches, float64."""
    attn = pipe64.transformer.transformer_blocks[0].attn2
    g = torch.Generator().manual_seed(11)
    image = torch.randn(4, 8, attn.query_dim, generator=g, dtype=torch.float64)  # (branch, frame)
    plain = JointAttnProcessor2_0()
    store = FeatureStore(reference_plan(1, "anchor"))
    with torch.inference_mode(), store.frame_step(0, 0):
        alone = JointCrossFrameAttnProcessor(store, "attn2")(attn, image[[0, 2]])
    assert torch.equal(alone, plain(attn, image[[0, 2]]))
    store = FeatureStore(reference_plan(2, "anchor"), chunk_size=2)
    with torch.inference_mode(), store.chunk_step(range(2), 0):
        out = JointCrossFrameAttnProcessor(store, "attn2")(attn, image)
    with torch.inference_mode():
        both = plain(attn, torch.cat([image[[1, 3]], image[[0, 2]]], dim=1))[:, :8]
        assert (out[[1, 3]] - both).abs().max().item() < 1e-12
        assert (out[[1, 3]] - plain(attn, image[[1, 3]])).abs().max().item() > 1e-3
        assert torch.equal(out[[0, 2]], plain(attn, image[[0, 2]]))


@pytest.mark.parametrize("attend", ["anchor+previous", "previous"])
def test_frame_batch_3_equals_one_at_a_time_with_mmdit_x_image_attention(
    pipe64, clip64, attend, report_measurement
):
    """Block 0 (MMDiT-X): its joint and its image attention both injected, three frames
    per model call equal one at a time in float64."""
    x_t, conditioning, prompt, negative = clip64
    run = {
        n: pipe64.edit(
            x_t, conditioning, prompt, negative, num_inference_steps=2, frame_batch=n,
            attend=attend, inject_blocks=(0,),
        )[0]
        for n in (1, 3)
    }  # fmt: skip
    gap = (run[3] - run[1]).abs().max().item()
    report_measurement(f"SD3 attn2 frame-batch 3 vs 1 ({attend}, float64)", f"{gap:.2e}")
    assert gap < 1e-12, gap


@pytest.fixture(scope="module")
def clip64(pipe64):
    frames = make_frames(3, HEIGHT, WIDTH, seed=5)
    conditioning = pipe64.prepare_conditioning(frames, control_images=controls(frames))
    x_t = noise(3, seed=3, dtype=torch.float64)
    return x_t, conditioning, pipe64.encode_prompt(EDIT), pipe64.encode_prompt("")


@pytest.mark.parametrize("attend", ATTEND_MODES)
def test_frame_batch_3_equals_one_frame_at_a_time_in_float64(
    pipe64, clip64, attend, report_measurement
):
    """With injection and the guided update on: three frames per model call equal one at a
    time to float reassociation (a wrong row read would be a gap of order 1)."""
    x_t, conditioning, prompt, negative = clip64
    run = {
        n: pipe64.edit(
            x_t, conditioning, prompt, negative, num_inference_steps=3, frame_batch=n, attend=attend
        )
        for n in (1, 3)
    }
    assert run[3][1].chunk_size == 3
    gap = (run[3][0] - run[1][0]).abs().max().item()
    report_measurement(f"SD3 frame-batch 3 vs 1 ({attend}, float64), max |dlatent|", f"{gap:.2e}")
    assert gap < 1e-12, gap


def test_injection_is_live_and_leaves_the_anchor_alone(pipe64, clip64):
    x_t, conditioning, prompt, negative = clip64
    before = dict(pipe64.transformer.attn_processors)

    def edit(**kwargs) -> torch.Tensor:
        kwargs.setdefault("latent_guidance_weight", 0.0)
        return pipe64.edit(x_t, conditioning, prompt, negative, num_inference_steps=3, **kwargs)[0]

    injected = edit()
    independent = edit(attend="none")
    assert torch.equal(injected[0], independent[0])  # the anchor attends to nobody
    assert (injected[1:] - independent[1:]).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4
    other_blocks = edit(inject_blocks=(0, 1))
    assert (other_blocks[1:] - injected[1:]).abs().max().item() > 1e-4
    after = pipe64.transformer.attn_processors
    assert all(after[name] is before[name] for name in before)  # restored


def test_the_default_blocks_are_the_later_half():
    assert default_inject_blocks(24) == tuple(range(12, 24))  # SD3.5 Medium
    assert default_inject_blocks(38) == tuple(range(19, 38))  # SD3.5 Large


def test_inject_blocks_chooses_the_processors(pipe):
    injection = JointAttentionInjection(pipe.transformer, (0, 2))
    store = FeatureStore(reference_plan(2, "anchor"))
    with injection.installed(store) as layers:
        installed = pipe.transformer.attn_processors
        assert layers == [
            "transformer_blocks.0.attn.processor",
            "transformer_blocks.0.attn2.processor",  # block 0 is MMDiT-X (tiny_sd3)
            "transformer_blocks.2.attn.processor",
        ]
        chosen = [n for n, p in installed.items() if isinstance(p, JointCrossFrameAttnProcessor)]
        assert chosen == layers
    assert not any(
        isinstance(p, JointCrossFrameAttnProcessor)
        for p in pipe.transformer.attn_processors.values()
    )
    assert JointAttentionInjection(pipe.transformer).layers() == [
        "transformer_blocks.2.attn.processor",
        "transformer_blocks.3.attn.processor",
    ]


@pytest.mark.bitwise
def test_step_and_frame_order_and_resume_are_bitwise_identical(pipe):
    """With injection and the guided update on (float32): frame-major = step-major, and a
    resumed edit = an uninterrupted one."""
    frames = make_frames(3, HEIGHT, WIDTH, seed=9)
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    x_t, text = noise(3, seed=4), (pipe.encode_prompt(EDIT), pipe.encode_prompt(""))
    checkpoints = []
    by_step, _ = pipe.edit(
        x_t, conditioning, *text, num_inference_steps=3, schedule="step",
        on_step_end=checkpoints.append,
    )  # fmt: skip
    by_frame, _ = pipe.edit(x_t, conditioning, *text, num_inference_steps=3, schedule="frame")
    resumed, _ = pipe.edit(x_t, conditioning, *text, num_inference_steps=3, resume=checkpoints[0])
    assert torch.equal(by_step, by_frame) and torch.equal(by_step, resumed)


def test_a_local_edit_keeps_every_pixel_outside_the_mask(pipe):
    frames = make_frames(2, HEIGHT, WIDTH, seed=10)
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[8:24, 16:48] = 1.0
    out = pipe(
        frames, EDIT, SCENE, num_inference_steps=2, control_images=controls(frames),
        masks=[mask, mask],
    )  # fmt: skip
    for frame, edited in zip(frames, out.frames, strict=True):
        assert np.array_equal(edited[mask == 0], frame[mask == 0])
        assert not np.array_equal(edited[mask == 1], frame[mask == 1])


def test_lora_changes_the_model_and_scale_zero_is_no_lora(tiny_sd3, tmp_path):
    from tiny_sd3 import build_sd3_lora

    lora = build_sd3_lora(tiny_sd3.model, tmp_path / "lora.safetensors")
    nets = [str(tiny_sd3.controlnets[0])]
    outputs = {}
    for name, loras in {"none": [], "zero": [(str(lora), 0.0)], "one": [(str(lora), 1.0)]}.items():
        loaded = load_pipeline(str(tiny_sd3.model), controlnets=nets, loras=loras)
        x, text = noise(1, seed=5), loaded.encode_prompt(EDIT)
        control = torch.zeros(1, *LATENT)
        with torch.inference_mode():
            outputs[name] = loaded.model_output(x, control, 500.0, text, 1)
    assert torch.equal(outputs["zero"], outputs["none"])
    assert (outputs["one"] - outputs["none"]).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------- loading
def test_load_pipeline_picks_the_sd3_pipeline_for_a_saved_folder(tiny_sd3):
    assert is_sd3_checkpoint(str(tiny_sd3.model))
    loaded = load_pipeline(str(tiny_sd3.model), controlnets=[str(tiny_sd3.controlnets[0])])
    assert isinstance(loaded, Pix2VideoSD3ControlNetPipeline)
    assert loaded.num_controlnets == 1 and loaded.latent_channels == 16
    assert loaded.size_multiple == 16


def one_sentence(message: str) -> bool:
    return re.search(r"[.!?]\s+[A-Z]", message) is None and message.endswith(".")


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("turbo", r"few-step \(Turbo\) SD3 checkpoint: .*cannot edit them"),
        ("no-controlnet", r"\(SD3\) needs an SD3 ControlNet for the video's structure"),
        ("sd15-controlnet", r"is a ControlNetModel, not an SD3 ControlNet"),
        ("inpainting-controlnet", r"is an SD3 inpainting ControlNet .*cannot condition a video"),
    ],
)
def test_refusals_are_one_sentence(tiny_sd3, tmp_path, case, pattern):
    model, controlnets = str(tiny_sd3.model), [str(tiny_sd3.controlnets[0])]
    if case == "turbo":
        model = str(shutil.copytree(tiny_sd3.model, tmp_path / "sd3.5-large-turbo"))
    elif case == "no-controlnet":
        controlnets = []
    elif case == "inpainting-controlnet":
        from tiny_sd3 import TRANSFORMER_KWARGS

        net = SD3ControlNetModel(num_layers=1, extra_conditioning_channels=1, **TRANSFORMER_KWARGS)
        net.save_pretrained(tmp_path / "inpainting")
        controlnets = [str(tmp_path / "inpainting")]
    else:
        from tiny_sd15 import build_controlnet

        controlnets = [str(build_controlnet(tmp_path / "sd15-controlnet", seed=1))]
    with pytest.raises(ModelNotAvailableError, match=pattern) as error:
        load_pipeline(model, controlnets=controlnets)
    assert one_sentence(str(error.value)), str(error.value)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("size", r"Frame sides must be multiples of 16, got 64x24"),
        ("no-control", r"needs one control image per frame"),
        ("depth", r"takes control images .*not depth maps"),
        ("blocks", r"inject_blocks \[7\] are not joint blocks of this transformer, which has 4"),
        ("block-text", r"inject_blocks must be block indices"),
        ("long-prompt", r"has 300 tokens; the text encoder reads at most 256"),
    ],
)
def test_bad_inputs_are_one_sentence(pipe, case, pattern):
    frames = make_frames(1, HEIGHT, WIDTH)
    kwargs = dict(
        frames=frames,
        prompt=EDIT,
        source_prompt=SCENE,
        num_inference_steps=1,
        control_images=controls(frames),
    )
    if case == "size":
        kwargs.update(
            frames=make_frames(1, 24, 64), control_images=controls(make_frames(1, 24, 64))
        )
    elif case == "no-control":
        kwargs.update(control_images=None)
    elif case == "depth":
        kwargs.update(depth_maps=np.zeros((1, 32, 64), np.float32))
    elif case == "blocks":
        kwargs.update(inject_blocks=(7,))
    elif case == "block-text":
        kwargs.update(inject_blocks="late")
    else:
        kwargs.update(prompt=" ".join(["cat"] * 299))
    with pytest.raises(InputError, match=pattern) as error:
        pipe(**kwargs)
    assert one_sentence(str(error.value)), str(error.value)


def test_a_unet_backbone_refuses_inject_blocks_before_any_model_work(tiny_pipe):
    evaluations = tiny_pipe.unet_evaluations
    with pytest.raises(InputError, match="inject_blocks chooses a transformer's injected blocks"):
        tiny_pipe(make_frames(1), EDIT, SCENE, num_inference_steps=1, inject_blocks=(1,))
    assert tiny_pipe.unet_evaluations == evaluations


# ---------------------------------------------------------------------------- workers
CHAIN_FRAMES, CHAIN_STEPS = 5, 3
CHAIN_CONFIGS = {
    "anchor+previous": {},
    "frame batch 2": {"frame_batch": 2},
    "MMDiT-X block 0 (attn and attn2)": {"inject_blocks": (0,), "frame_batch": 2},
}


def _chain_edit(pipe, config: dict, chain=None) -> torch.Tensor:
    """`pipe.edit` of a 5-frame clip (injection and guided update on): one process or a part."""
    frames = make_frames(CHAIN_FRAMES, HEIGHT, WIDTH, seed=6)
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    x_t = noise(CHAIN_FRAMES, seed=8, dtype=torch.float64)
    rows = list(chain.positions) if chain is not None else list(range(CHAIN_FRAMES))
    final, _ = pipe.edit(
        x_t[rows], conditioning, pipe.encode_prompt(EDIT), pipe.encode_prompt(""),
        num_inference_steps=CHAIN_STEPS, chain=chain, **config,
    )  # fmt: skip
    return final


def _chain_worker(rank: int, world: int, port: int, model: str, controlnet: str, out: str) -> None:
    from pix2video.core.frame_chain import ChainPlace, ChainSplit

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    pipe = load_pipeline(model, controlnets=[controlnet], torch_dtype=torch.float64)
    place = ChainPlace(ChainSplit.even(CHAIN_FRAMES, world), rank)
    parts = {name: _chain_edit(pipe, config, place) for name, config in CHAIN_CONFIGS.items()}
    torch.save(parts, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.integration
def test_two_workers_equal_one_process_in_float64(tiny_sd3, pipe64, tmp_path, report_measurement):
    """The joint-attention features and x0s cross between workers through the shared store
    and exchange: the parts put together equal one process (float64)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(tiny_sd3.model), str(tiny_sd3.controlnets[0]), str(tmp_path))
    mp.start_processes(_chain_worker, args=args, nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for name, config in CHAIN_CONFIGS.items():
        single = _chain_edit(pipe64, config)
        joined = torch.cat([part[name] for part in parts])
        gap = (joined - single).abs().max().item()
        report_measurement(f"SD3 2 workers vs one process ({name}, float64)", f"{gap:.2e}")
        assert joined.shape == single.shape and gap < 1e-12, gap


# ---------------------------------------------------------------------------- job and CLI
def cli_edit(tmp_path, tiny_sd3, name: str, *extra) -> tuple[int, str]:
    """`pix2video edit` of 3 cockatoo frames at 64x32 with the tiny SD3 and a canny ControlNet."""
    args = [COCKATOO, "-p", EDIT, "--source-prompt", SCENE, "--model", tiny_sd3.model]
    args += ["--controlnet", tiny_sd3.controlnets[0], "--control", "canny", "--size", "64x32"]
    args += ["--max-frames", 3, "--steps", 2, "--dtype", "float32", "-o", tmp_path / name]
    args += ["--cache-dir", tmp_path / "cache", *extra]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.bitwise
def test_cli_edit_equals_the_job_and_its_preview_and_inject_blocks_changes_it(
    tmp_path, tiny_sd3, pipelines
):
    code, output = cli_edit(tmp_path, tiny_sd3, "cli", "-q")
    assert code == 0, output
    from_cli = png_frames(tmp_path / "cli")
    assert len(from_cli) == 3 and from_cli[0].shape == (32, 64, 3)
    settings = EditSettings(
        input=COCKATOO, prompt=EDIT, source_prompt=SCENE, model=str(tiny_sd3.model),
        controlnet=(str(tiny_sd3.controlnets[0]),), control=("canny",), size="64x32",
        max_frames=3, steps=2, dtype="float32", output=tmp_path / "job",
        cache_dir=tmp_path / "job-cache",
    )  # fmt: skip
    preview = preview_anchor(settings, pipelines=pipelines)
    result = edit_clip(settings, pipelines=pipelines)
    assert result.frames == 3 and result.inversion_cached == 1  # the preview's inversion
    assert np.array_equal(preview.edited, png_frames(tmp_path / "job")[0])
    assert all(
        np.array_equal(a, b) for a, b in zip(from_cli, png_frames(tmp_path / "job"), strict=True)
    )
    # other blocks: another edit (its own cache entry), the depth and inversion reused
    code, output = cli_edit(tmp_path, tiny_sd3, "blocks", "--inject-blocks", "0,1")
    assert code == 0, output
    assert "inversion: 3 cached" in output and "editing: computed" in output, output
    other = png_frames(tmp_path / "blocks")
    assert any(not np.array_equal(a, b) for a, b in zip(from_cli[1:], other[1:], strict=True))
    assert np.array_equal(from_cli[0], other[0])  # the anchor attends to nobody
    code, output = cli_edit(tmp_path, tiny_sd3, "bad", "--inject-blocks", "9")
    assert code == 2 and "inject_blocks [9] are not joint blocks" in output, output


def test_sd3_frames_are_1024_on_the_long_side_and_multiples_of_16(tiny_sd3):
    from pix2video.job.source import size_setting
    from pix2video.media import fit_size
    from pix2video.pipelines.checkpoints import model_geometry

    settings = EditSettings(input=COCKATOO, prompt=EDIT, output="out", model=str(tiny_sd3.model))
    assert model_geometry(str(tiny_sd3.model)) == (16, 16)
    assert model_geometry("tiny") == (4, 8)
    assert size_setting(settings) == 1024
    for source in ((1280, 720), (1000, 700), (720, 1280), (333, 1000)):
        width, height = fit_size(*source, 1024, 16)
        assert max(width, height) == 1024 and width % 16 == 0 and height % 16 == 0
    assert fit_size(1280, 720, 512) == (512, 288)  # the UNet families' multiple of 8 as before


@pytest.mark.integration
def test_cli_edit_on_two_workers_equals_one_process(tmp_path, tiny_sd3, report_measurement):
    """`--workers 2` through the CLI: the frames of one process within one grey level (PNG;
    across processes and thread counts bit equality is not asserted, as test_multi_worker.py
    explains)."""
    code, output = cli_edit(tmp_path, tiny_sd3, "one", "-q")
    assert code == 0, output
    code, output = cli_edit(tmp_path, tiny_sd3, "two", "--workers", 2, "--no-cache")
    assert code == 0 and "Workers: 2" in output, output
    one, two = png_frames(tmp_path / "one"), png_frames(tmp_path / "two")
    gap = frame_gap(one, two)
    report_measurement("SD3 CLI 2 workers vs one process, max grey levels", gap)
    assert len(one) == len(two) == 3 and gap <= 1
