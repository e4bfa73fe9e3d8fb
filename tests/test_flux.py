"""FLUX.1 Depth/Canny [dev] (`pipelines/flux.py`) and the injection in FLUX's attention
(`core/flux_attention.py`), on tiny random models built in code (`tiny_flux.py`), offline.

- the base path (injection and guided update off) equals diffusers' `FluxControlPipeline`
  from the same noise (its packed latents unpacked); the gap is reported;
- invert-then-sample returns the source latents: the gap at 8/28/50 steps is reported and
  bounded; embedded guidance is one model row per frame, inversion included;
- the FLUX processor: no references = diffusers' processor (bitwise), in double- and
  single-stream blocks; references = the closed form; frame batches equal one frame at a
  time (float64) in every attend mode, and two workers one process; injection is live; the
  block numbering; step/frame order and resume are bitwise; masks keep the outside; LoRA
  scale 0 is none;
- `load_pipeline` picks the FLUX pipeline for a saved folder and refuses schnell, a FLUX
  without control and `--controlnet`; bad inputs are one sentence;
- the CLI (`--model FLUX --control depth`, no `--controlnet`: the model is its own control
  model) equals the job and its preview, `--inject-blocks` is another edit, `--workers 2`
  equals one process.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from diffusers import FluxControlPipeline
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
from PIL import Image
from support import COCKATOO, frame_gap, make_frames, png_frames

from pix2video import EditSettings, edit_clip, preview_anchor
from pix2video.cli import main
from pix2video.core.attention import ATTEND_MODES, FeatureStore, reference_plan
from pix2video.core.flux_attention import (
    VITAL_BLOCKS,
    FluxAttentionInjection,
    FluxCrossFrameAttnProcessor,
    default_inject_blocks,
)
from pix2video.errors import InputError, ModelNotAvailableError
from pix2video.pipelines.checkpoints import is_flux_checkpoint, load_pipeline
from pix2video.pipelines.control import canny_image
from pix2video.pipelines.flux import Pix2VideoFluxControlPipeline

EDIT, SCENE = "a red sports car", "a swan on a lake"
HEIGHT, WIDTH = 32, 64  # latents 4 x 8: 2 x 4 packed image tokens
LATENT = (4, HEIGHT // 8, WIDTH // 8)
REFERENCE_STEPS, GUIDANCE = 3, 10.0
TOLERANCE = 1e-5  # ours vs diffusers (float32), measured and reported


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory) -> SimpleNamespace:
    from tiny_flux import build_flux_control
    from tiny_sd15 import build_depth_anything

    root = tmp_path_factory.mktemp("tiny-flux")
    return SimpleNamespace(
        model=build_flux_control(root / "flux-depth"),
        depth_model=build_depth_anything(root / "depth-anything"),
        root=root,
    )


def our_pipeline(models, dtype=torch.float32) -> Pix2VideoFluxControlPipeline:
    pipe = Pix2VideoFluxControlPipeline.from_pretrained(models.model).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny_flux) -> Pix2VideoFluxControlPipeline:
    return our_pipeline(tiny_flux)


def controls(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [canny_image(f, 100, 200) for f in frames]


def noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, *LATENT, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def edit(pipe, x_t, conditioning, prompt=EDIT, **options) -> torch.Tensor:
    text = pipe.encode_prompt(prompt) if isinstance(prompt, str) else prompt
    options = {"num_inference_steps": REFERENCE_STEPS, "guidance_scale": GUIDANCE, **options}
    return pipe.edit(x_t, conditioning, text, pipe.encode_negative_prompt(""), **options)[0]


# ---------------------------------------------------------------------------- base path
def diffusers_path(pipe, image, x_t) -> torch.Tensor:
    """diffusers' `FluxControlPipeline` on `pipe`'s components from `x_t`: final latents,
    unpacked to (1, C, h, w)."""
    theirs = FluxControlPipeline(
        scheduler=pipe.scheduler,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2,
        transformer=pipe.transformer,
    )
    theirs.set_progress_bar_config(disable=True)
    packed = FluxControlPipeline._pack_latents(x_t, 1, LATENT[0], *LATENT[1:])
    out = theirs(
        EDIT,
        control_image=image,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=REFERENCE_STEPS,
        guidance_scale=GUIDANCE,
        latents=packed,
        output_type="latent",
    ).images
    return FluxControlPipeline._unpack_latents(out, HEIGHT, WIDTH, pipe.vae_scale_factor)


def test_anchor_frame_equals_diffusers_flux_control_pipeline(
    pipe, posterior_mean, report_measurement
):
    frame = make_frames(1, HEIGHT, WIDTH)[0]
    control = controls([frame])
    x_t = noise(1, seed=0)
    conditioning = pipe.prepare_conditioning([frame], control_images=control)
    assert conditioning.shape == (1, *LATENT)
    evaluations = pipe.unet_evaluations
    ours = edit(pipe, x_t, conditioning, attend="none", latent_guidance_weight=0.0)
    assert pipe.unet_evaluations - evaluations == REFERENCE_STEPS  # one row: no CFG pair
    theirs = diffusers_path(pipe, Image.fromarray(control[0]), x_t)
    gap = (ours - theirs).abs().max().item()
    report_measurement("FLUX anchor vs diffusers (3 steps), max |dlatent|", f"{gap:.2e}")
    assert gap < TOLERANCE, gap
    # the control image and the embedded guidance matter, far more than the gap
    other = pipe.prepare_conditioning([frame], control_images=[np.zeros_like(control[0])])
    moved = edit(pipe, x_t, other, attend="none", latent_guidance_weight=0.0)
    assert (moved - ours).abs().max().item() > 1000 * max(gap, 1e-7)
    guided = edit(pipe, x_t, conditioning, attend="none", latent_guidance_weight=0.0,
                  guidance_scale=2.0)  # fmt: skip
    assert (guided - ours).abs().max().item() > 1000 * max(gap, 1e-7)


def test_the_schedule_is_diffusers_flux_schedule_with_the_dynamic_shift(pipe):
    schedule = pipe.sampling_schedule(4, (64, 64))  # 32 x 32 = 1024 image tokens
    mu = 0.5 + (1.15 - 0.5) * (1024 - 256) / (4096 - 256)
    base = np.linspace(1.0, 0.25, 4)
    shifted = np.exp(mu) / (np.exp(mu) + (1 / base - 1))
    assert np.allclose(schedule.sigmas[:-1].numpy(), shifted, atol=1e-6)
    assert schedule.sigmas[-1].item() == 0.0
    assert not np.allclose(pipe.sampling_schedule(4, (8, 8)).sigmas.numpy(), schedule.sigmas)


# ---------------------------------------------------------------------------- inversion
RECONSTRUCTION_BOUND = {8: 0.3, 28: 0.1, 50: 0.05}  # max |dlatent|


def test_invert_then_sample_returns_the_source_latents(pipe, report_measurement):
    """Inversion (source prompt, embedded guidance 1: one row per step) then sampling with
    the same prompt and guidance: the frame's own latents come back, closer with more steps."""
    frame = make_frames(1, HEIGHT, WIDTH, seed=2)[0]
    conditioning = pipe.prepare_conditioning([frame], control_images=controls([frame]))
    source = pipe.encode_frames([frame])
    text = pipe.encode_prompt(SCENE)
    gaps = {}
    for steps in RECONSTRUCTION_BOUND:
        evaluations = pipe.unet_evaluations
        x_t = pipe.invert(source, conditioning, text, steps)
        assert pipe.unet_evaluations - evaluations == steps
        back = edit(pipe, x_t, conditioning, text, num_inference_steps=steps, guidance_scale=1.0,
                    attend="none", latent_guidance_weight=0.0)  # fmt: skip
        gaps[steps] = (back - source).abs().max().item()
        report_measurement(
            f"FLUX invert-then-sample at {steps} steps, max |dlatent| (latents' std "
            f"{source.std().item():.2f})",
            f"{gaps[steps]:.2e}",
        )
    assert all(gaps[s] < bound for s, bound in RECONSTRUCTION_BOUND.items()), gaps
    assert gaps[50] < gaps[8], gaps


# ---------------------------------------------------------------------------- FLUX attention
N_TEXT, N_IMAGE = 5, 8


def attention_inputs(pipe, frames: int, single: bool, dtype=torch.float64):
    """A FLUX block's attention, image and text rows (one branch) and the rotary embedding of
    `N_TEXT` text ids and a 2 x 4 image grid."""
    transformer = pipe.transformer
    block = (
        transformer.single_transformer_blocks[1] if single else transformer.transformer_blocks[1]
    )
    g = torch.Generator().manual_seed(7)
    width = transformer.inner_dim
    image = torch.randn(frames, N_IMAGE, width, generator=g, dtype=dtype)
    text = torch.randn(frames, N_TEXT, width, generator=g, dtype=dtype)
    ids = torch.cat(
        [
            torch.zeros(N_TEXT, 3),
            FluxControlPipeline._prepare_latent_image_ids(1, 2, 4, "cpu", torch.float32),
        ]
    )
    return block.attn, image, text, transformer.pos_embed(ids)


def call(processor, attn, image, text, rotary, single: bool):
    """(image, text) outputs of `processor`, whatever the block kind."""
    if not single:
        return processor(attn, image, text, None, rotary)
    out = processor(attn, torch.cat([text, image], dim=1), None, None, rotary)
    return out[:, N_TEXT:], out[:, :N_TEXT]


@pytest.fixture(scope="module")
def pipe64(tiny_flux) -> Pix2VideoFluxControlPipeline:
    """The tiny FLUX pipeline in float64 (batch-invariant CPU kernels)."""
    return our_pipeline(tiny_flux, torch.float64)


@pytest.mark.parametrize("single", [False, True], ids=["double-stream", "single-stream"])
def test_a_frame_without_references_gets_diffusers_flux_attention(pipe64, single):
    attn, image, text, rotary = attention_inputs(pipe64, 1, single)
    store = FeatureStore(reference_plan(1, "anchor+previous"))
    processor = FluxCrossFrameAttnProcessor(store, "layer", single, N_TEXT)
    with torch.inference_mode(), store.frame_step(0, 0):
        ours = call(processor, attn, image, text, rotary, single)
    theirs = call(FluxAttnProcessor(), attn, image, text, rotary, single)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def closed_form_doubled_image_keys(attn, image, text, rotary, single: bool) -> torch.Tensor:
    """FLUX attention of the image queries where every image key counts twice (logit + log 2)."""
    from diffusers.models.embeddings import apply_rotary_emb

    def heads(x):
        return x.unflatten(-1, (attn.heads, -1))

    add = (
        (attn.to_q, attn.to_k, attn.to_v)
        if single
        else (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
    )
    norms = (attn.norm_q, attn.norm_k) if single else (attn.norm_added_q, attn.norm_added_k)
    query = torch.cat([norms[0](heads(add[0](text))), attn.norm_q(heads(attn.to_q(image)))], 1)
    key = torch.cat([norms[1](heads(add[1](text))), attn.norm_k(heads(attn.to_k(image)))], 1)
    value = torch.cat([heads(add[2](text)), heads(attn.to_v(image))], 1)
    query = apply_rotary_emb(query, rotary, sequence_dim=1).transpose(1, 2)
    key = apply_rotary_emb(key, rotary, sequence_dim=1).transpose(1, 2)
    bias = torch.zeros(N_TEXT + N_IMAGE, dtype=image.dtype)
    bias[N_TEXT:] = torch.log(torch.tensor(2.0, dtype=image.dtype))
    out = F.scaled_dot_product_attention(
        query[:, :, N_TEXT:], key, value.transpose(1, 2), attn_mask=bias[None]
    )
    out = out.transpose(1, 2).flatten(2)
    return out if single else attn.to_out[0](out)


@pytest.mark.parametrize("single", [False, True], ids=["double-stream", "single-stream"])
def test_references_add_their_image_tokens_at_the_same_positions(pipe64, single):
    """Frame 1 attends to frame 0; with frame 0's input equal to frame 1's, its image keys
    (with the rotary embedding of the same grid positions) appear twice: the closed form is
    FLUX attention with log 2 added to the image keys' logits. Its text queries attend to its
    own tokens only: diffusers' attention."""
    attn, image, text, rotary = attention_inputs(pipe64, 2, single)
    image[1] = image[0]
    store = FeatureStore(reference_plan(2, "anchor"), chunk_size=2)
    processor = FluxCrossFrameAttnProcessor(store, "layer", single, N_TEXT)
    with torch.inference_mode(), store.chunk_step(range(2), 0):
        image_out, text_out = call(processor, attn, image, text, rotary, single)
    plain_image, plain_text = call(FluxAttnProcessor(), attn, image[1:], text[1:], rotary, single)
    assert (text_out[1:] - plain_text).abs().max().item() < 1e-12
    assert (image_out[1:] - plain_image).abs().max().item() > 1e-3
    expected = closed_form_doubled_image_keys(attn, image[1:], text[1:], rotary, single)
    assert (image_out[1:] - expected).abs().max().item() < 1e-12
    anchor = call(FluxAttnProcessor(), attn, image[:1], text[:1], rotary, single)
    assert torch.equal(image_out[:1], anchor[0]) and torch.equal(text_out[:1], anchor[1])


@pytest.fixture(scope="module")
def clip64(pipe64):
    frames = make_frames(3, HEIGHT, WIDTH, seed=5)
    conditioning = pipe64.prepare_conditioning(frames, control_images=controls(frames))
    return noise(3, seed=3, dtype=torch.float64), conditioning, pipe64.encode_prompt(EDIT)


@pytest.mark.parametrize("attend", ATTEND_MODES)
def test_frame_batch_3_equals_one_frame_at_a_time_in_float64(
    pipe64, clip64, attend, report_measurement
):
    """Injection (all blocks: both kinds) and the guided update on: three frames per model
    call equal one at a time to float reassociation (a wrong row read would be of order 1)."""
    x_t, conditioning, prompt = clip64
    blocks = tuple(range(5))
    run = {
        n: pipe64.edit(x_t, conditioning, prompt, prompt, num_inference_steps=REFERENCE_STEPS,
                       guidance_scale=GUIDANCE, frame_batch=n, attend=attend, inject_blocks=blocks)
        for n in (1, 3)
    }  # fmt: skip
    assert run[3][1].chunk_size == 3
    gap = (run[3][0] - run[1][0]).abs().max().item()
    report_measurement(f"FLUX frame-batch 3 vs 1 ({attend}, float64), max |dlatent|", f"{gap:.2e}")
    assert gap < 1e-12, gap


@pytest.mark.parametrize("blocks", [(0, 1), (2, 3, 4)], ids=["double-stream", "single-stream"])
def test_injection_is_live_in_both_kinds_of_block_and_leaves_the_anchor_alone(
    pipe64, clip64, blocks
):
    x_t, conditioning, prompt = clip64
    before = dict(pipe64.transformer.attn_processors)
    injected = edit(
        pipe64, x_t, conditioning, prompt, inject_blocks=blocks, latent_guidance_weight=0.0
    )
    independent = edit(pipe64, x_t, conditioning, prompt, attend="none", latent_guidance_weight=0.0)
    assert torch.equal(injected[0], independent[0])  # the anchor attends to nobody
    assert (injected[1:] - independent[1:]).abs().amax(dim=(1, 2, 3)).min().item() > 1e-4
    batched = edit(pipe64, x_t, conditioning, prompt, inject_blocks=blocks,
                   latent_guidance_weight=0.0, frame_batch=3)  # fmt: skip
    assert (batched - injected).abs().max().item() < 1e-12  # live in a frame batch too
    default = edit(pipe64, x_t, conditioning, prompt, latent_guidance_weight=0.0)
    assert (default[1:] - injected[1:]).abs().max().item() > 1e-4  # other blocks, other edit
    after = pipe64.transformer.attn_processors
    assert all(after[name] is before[name] for name in before)  # restored


def test_the_default_blocks_are_stable_flows_vital_layers_and_the_numbering(pipe):
    assert default_inject_blocks(19, 38) == VITAL_BLOCKS == (0, 1, 17, 18, 25, 28, 53, 54, 56)
    assert default_inject_blocks(2, 3) == (0, 1, 2, 4)  # the same relative depths
    injection = FluxAttentionInjection(pipe.transformer, None, 512)
    assert injection.layers() == [
        "transformer_blocks.0.attn.processor",
        "transformer_blocks.1.attn.processor",
        "single_transformer_blocks.0.attn.processor",
        "single_transformer_blocks.2.attn.processor",
    ]
    store = FeatureStore(reference_plan(2, "anchor"))
    with FluxAttentionInjection(pipe.transformer, (1, 3), 512).installed(store) as layers:
        chosen = [n for n, p in pipe.transformer.attn_processors.items()
                  if isinstance(p, FluxCrossFrameAttnProcessor)]  # fmt: skip
        assert (
            chosen
            == layers
            == [
                "transformer_blocks.1.attn.processor",
                "single_transformer_blocks.1.attn.processor",
            ]
        )


@pytest.mark.bitwise
def test_step_and_frame_order_and_resume_are_bitwise_identical(pipe):
    """With injection and the guided update on (float32): frame-major = step-major, and a
    resumed edit = an uninterrupted one."""
    frames = make_frames(3, HEIGHT, WIDTH, seed=9)
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    x_t, checkpoints = noise(3, seed=4), []
    by_step = edit(pipe, x_t, conditioning, schedule="step", on_step_end=checkpoints.append)
    by_frame = edit(pipe, x_t, conditioning, schedule="frame")
    resumed = edit(pipe, x_t, conditioning, resume=checkpoints[0])
    assert torch.equal(by_step, by_frame) and torch.equal(by_step, resumed)


def test_a_local_edit_keeps_every_pixel_outside_the_mask(pipe):
    frames = make_frames(2, HEIGHT, WIDTH, seed=10)
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[8:24, 16:48] = 1.0
    out = pipe(frames, EDIT, SCENE, num_inference_steps=2, guidance_scale=GUIDANCE,
               control_images=controls(frames), masks=[mask, mask])  # fmt: skip
    for frame, edited in zip(frames, out.frames, strict=True):
        assert np.array_equal(edited[mask == 0], frame[mask == 0])
        assert not np.array_equal(edited[mask == 1], frame[mask == 1])


def test_lora_changes_the_model_and_scale_zero_is_no_lora(tiny_flux, tmp_path):
    from tiny_flux import build_flux_lora

    lora = build_flux_lora(tiny_flux.model, tmp_path / "lora.safetensors")
    outputs = {}
    for name, loras in {"none": [], "zero": [(str(lora), 0.0)], "one": [(str(lora), 1.0)]}.items():
        loaded = load_pipeline(str(tiny_flux.model), loras=loras)
        x, text = noise(1, seed=5), loaded.encode_prompt(EDIT)
        with torch.inference_mode():
            outputs[name] = loaded.model_output(x, torch.zeros(1, *LATENT), 500.0, text, 1)
    assert torch.equal(outputs["zero"], outputs["none"])
    assert (outputs["one"] - outputs["none"]).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------- loading
def one_sentence(message: str) -> bool:
    return re.search(r"[.!?]\s+[A-Z]", message) is None and message.endswith(".")


def test_load_pipeline_picks_the_flux_control_pipeline_for_a_saved_folder(tiny_flux):
    from pix2video.pipelines.checkpoints import model_geometry

    assert is_flux_checkpoint(str(tiny_flux.model))
    loaded = load_pipeline(str(tiny_flux.model))
    assert isinstance(loaded, Pix2VideoFluxControlPipeline)
    assert loaded.latent_channels == 4 and loaded.size_multiple == 16
    assert model_geometry(str(tiny_flux.model)) == (4, 16)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("schnell", r"few-step FLUX.1 \[schnell\]-kind checkpoint .*Canny \[dev\] with 20-50"),
        ("no-control", r"FLUX.1 model without control \(its transformer reads 16 channels"),
        ("controlnet", r"reads the control image itself .*takes no --controlnet"),
    ],
)
def test_refusals_are_one_sentence(tiny_flux, case, pattern):
    from tiny_flux import flux_variant

    model, controlnets = tiny_flux.model, []
    if case == "schnell":
        model = flux_variant(model, tiny_flux.root / case, guidance_embeds=False)
    elif case == "no-control":
        model = flux_variant(model, tiny_flux.root / case, in_channels=16)
    else:
        controlnets = [str(tiny_flux.root / "any-controlnet")]
    with pytest.raises(ModelNotAvailableError, match=pattern) as error:
        load_pipeline(str(model), controlnets=controlnets)
    assert one_sentence(str(error.value)), str(error.value)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("size", r"Frame sides must be multiples of 16, got 64x24"),
        ("no-control", r"needs one control image per frame"),
        ("depth", r"takes control images .*not depth maps"),
        ("negative", r"FLUX \[dev\] models take no negative prompt"),
        ("blocks", r"inject_blocks \[5\] are not blocks of this FLUX transformer, which has 5 "),
        ("long-prompt", r"has 600 tokens; the text encoder reads at most 512"),
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
        small = make_frames(1, 24, 64)
        kwargs.update(frames=small, control_images=controls(small))
    elif case == "no-control":
        kwargs.update(control_images=None)
    elif case == "depth":
        kwargs.update(depth_maps=np.zeros((1, 32, 64), np.float32))
    elif case == "negative":
        kwargs.update(negative_prompt="blurry")
    elif case == "blocks":
        kwargs.update(inject_blocks=(5,))
    else:
        kwargs.update(prompt=" ".join(["cat"] * 599))
    evaluations = pipe.unet_evaluations
    with pytest.raises(InputError, match=pattern) as error:
        pipe(**kwargs)
    assert one_sentence(str(error.value)), str(error.value)
    assert pipe.unet_evaluations == evaluations


def test_the_whole_call_edits_a_clip(pipe):
    """`__call__` end to end: inversion with the source prompt, then the edit with injection
    and the guided update; one model row per frame and step in both."""
    frames = make_frames(2, HEIGHT, WIDTH, seed=11)
    out = pipe(frames, EDIT, SCENE, num_inference_steps=2, guidance_scale=GUIDANCE,
               control_images=controls(frames))  # fmt: skip
    assert len(out.frames) == 2 and out.frames[0].shape == (HEIGHT, WIDTH, 3)
    assert out.unet_evaluations == 2 * 2 + 2 * 2  # inversion + editing, no CFG pairs
    assert out.final_latents.shape == (2, *LATENT)


# ---------------------------------------------------------------------------- workers
CHAIN_FRAMES, CHAIN_STEPS = 5, 3
CHAIN_CONFIGS = {"anchor+previous": {}, "frame batch 2": {"frame_batch": 2}}


def _chain_edit(pipe, config: dict, chain=None) -> torch.Tensor:
    """A 5-frame edit (injection in every block, guided update on): one process or a part."""
    frames = make_frames(CHAIN_FRAMES, HEIGHT, WIDTH, seed=6)
    conditioning = pipe.prepare_conditioning(frames, control_images=controls(frames))
    x_t = noise(CHAIN_FRAMES, seed=8, dtype=torch.float64)
    rows = list(chain.positions) if chain is not None else list(range(CHAIN_FRAMES))
    return edit(pipe, x_t[rows], conditioning, num_inference_steps=CHAIN_STEPS, chain=chain,
                inject_blocks=range(5), **config)  # fmt: skip


def _chain_worker(rank: int, world: int, port: int, model: str, out: str) -> None:
    from pix2video.core.frame_chain import ChainPlace, ChainSplit

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    pipe = load_pipeline(model, torch_dtype=torch.float64)
    place = ChainPlace(ChainSplit.even(CHAIN_FRAMES, world), rank)
    parts = {name: _chain_edit(pipe, config, place) for name, config in CHAIN_CONFIGS.items()}
    torch.save(parts, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.integration
def test_two_workers_equal_one_process_in_float64(tiny_flux, pipe64, tmp_path, report_measurement):
    """The FLUX blocks' stored inputs (double- and single-stream) and the x0s cross between
    workers through the shared store and exchange: the parts put together equal one process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (2, port, str(tiny_flux.model), str(tmp_path))
    mp.start_processes(_chain_worker, args=args, nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for name, config in CHAIN_CONFIGS.items():
        single = _chain_edit(pipe64, config)
        joined = torch.cat([part[name] for part in parts])
        gap = (joined - single).abs().max().item()
        report_measurement(f"FLUX 2 workers vs one process ({name}, float64)", f"{gap:.2e}")
        assert joined.shape == single.shape and gap < 1e-12, gap


# ---------------------------------------------------------------------------- job and CLI
def cli_edit(tmp_path, tiny_flux, name: str, *extra) -> tuple[int, str]:
    """`pix2video edit` of 3 cockatoo frames at 64x32 with the tiny FLUX Depth: `--control
    depth` names the image the model reads (no `--controlnet`)."""
    args = [COCKATOO, "-p", EDIT, "--source-prompt", SCENE, "--model", tiny_flux.model]
    args += ["--control", "depth", "--depth-model", tiny_flux.depth_model, "--size", "64x32"]
    args += ["--max-frames", 3, "--steps", 2, "--guidance-scale", GUIDANCE, "--dtype", "float32"]
    args += ["-o", tmp_path / name, "--cache-dir", tmp_path / "cache", *extra]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    return result.exit_code, result.output


@pytest.mark.bitwise
def test_cli_edit_with_control_depth_equals_the_job_and_its_preview(tmp_path, tiny_flux, pipelines):
    code, output = cli_edit(tmp_path, tiny_flux, "cli", "-q")
    assert code == 0, output
    from_cli = png_frames(tmp_path / "cli")
    assert len(from_cli) == 3 and from_cli[0].shape == (32, 64, 3)
    settings = EditSettings(
        input=COCKATOO, prompt=EDIT, source_prompt=SCENE, model=str(tiny_flux.model),
        control=("depth",), depth_model=str(tiny_flux.depth_model), size="64x32", max_frames=3,
        steps=2, guidance_scale=GUIDANCE, dtype="float32", output=tmp_path / "job",
        cache_dir=tmp_path / "job-cache",
    )  # fmt: skip
    preview = preview_anchor(settings, pipelines=pipelines)
    result = edit_clip(settings, pipelines=pipelines)
    assert result.frames == 3 and result.inversion_cached == 1  # the preview's inversion
    assert result.unet_evaluations == 2 * 2 + 3 * 2  # 2 frames' inversion, 3 edits: one row each
    from_job = png_frames(tmp_path / "job")
    assert np.array_equal(preview.edited, from_job[0])
    assert all(np.array_equal(a, b) for a, b in zip(from_cli, from_job, strict=True))
    # other blocks: another edit, the control latents and the inversion reused
    code, output = cli_edit(tmp_path, tiny_flux, "blocks", "--inject-blocks", "2,3,4")
    assert code == 0 and "inversion: 3 cached" in output, output
    other = png_frames(tmp_path / "blocks")
    assert np.array_equal(from_cli[0], other[0])  # the anchor attends to nobody
    assert any(not np.array_equal(a, b) for a, b in zip(from_cli[1:], other[1:], strict=True))


@pytest.mark.parametrize(
    "variant, extra, pattern",
    [
        ("", (), r"reads a control image for the video's structure: add --control depth"),
        ("", ("--control", "depth", "--control", "canny"), r"--control needs a --controlnet"),
        ("text-to-image", (), r"is a FLUX.1 model without control"),
    ],
)
def test_cli_refuses_a_flux_model_without_one_control(tmp_path, tiny_flux, variant, extra, pattern):
    """A FLUX Control model needs one --control; a FLUX without control (text to image) is the
    loader's sentence, not a call for --control."""
    from tiny_flux import flux_variant

    model = tiny_flux.model
    if variant:
        model = flux_variant(model, tmp_path / variant, in_channels=16)
    args = [COCKATOO, "-p", EDIT, "--source-prompt", SCENE, "--model", model, "--size", "64x32"]
    args += ["--max-frames", 1, "-o", tmp_path / "out", *extra]
    result = CliRunner().invoke(main, ["edit", *map(str, args)])
    assert result.exit_code != 0 and re.search(pattern, result.output), result.output
    assert "Traceback" not in result.output


@pytest.mark.integration
def test_cli_edit_on_two_workers_equals_one_process(tmp_path, tiny_flux, report_measurement):
    """`--workers 2` through the CLI: the frames of one process within one grey level (PNG;
    across processes and thread counts bit equality is not asserted, as for SD3)."""
    code, output = cli_edit(tmp_path, tiny_flux, "one", "-q")
    assert code == 0, output
    code, output = cli_edit(tmp_path, tiny_flux, "two", "--workers", 2, "--no-cache")
    assert code == 0 and "Workers: 2" in output, output
    one, two = png_frames(tmp_path / "one"), png_frames(tmp_path / "two")
    gap = frame_gap(one, two)
    report_measurement("FLUX CLI 2 workers vs one process, max grey levels", gap)
    assert len(one) == len(two) == 3 and gap <= 1
