"""What every Pix2Video pipeline shares, whatever its backbone: `Pix2VideoBase`.

A backbone pipeline (SD2-depth `sd2_depth.py`, SD 1.5 + ControlNet `sd15_controlnet.py`,
SDXL + ControlNet `sdxl.py`, SD3 + ControlNet `sd3.py`, FLUX.1 Depth/Canny `flux.py`) says
only how its conditioning is made and how one model evaluation reads it:

- `prepare_conditioning(frames, ...)`: per-frame conditioning (SD2's depth at latent size;
  ControlNets' control images at pixel size; SD3's and FLUX's control latents), one row each;
- `model_output(x, conditioning, t, text, batch)`: the raw model output for a batch (and
  `guidance=` for a model with `embedded_guidance`, FLUX [dev]);
- and, when it is not a UNet's decoder, where the cross-frame attention goes (`injection`)
  and the walk between noise levels (`sampling_schedule`).

Everything else is here, once: prompts, VAE encoding/decoding (as the reference does it),
classifier-free guidance in one batched call, the v-prediction to noise conversion
(`scheduler.py`), cancellation, the DDIM schedule, frames per call (`frame_batch.py`), and
the calls into the backbone-free core (`inversion.invert_frames`, `edit_loop.EditLoop`)
with the method's options (`options.EditOptions`, built once). `__call__` is the whole
method and reads like the paper: check inputs, encode prompts, conditioning, inversion,
editing, decoding.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from PIL import Image

from ..core.attention import DecoderSelfAttention, FeatureStore, Injection
from ..core.edit_loop import EditCheckpoint, EditLoop, FrameConditioning, SourceLatents
from ..core.frame_chain import ChainPlace
from ..core.inversion import DDIMSchedule, ProgressCallback, Schedule, invert_frames
from ..core.options import EditOptions
from ..errors import EditCancelled, InputError
from .frame_batch import edit_frame_batch, model_rows
from .inputs import check_call_inputs, check_prompt_tokens, padded_ids
from .masks import composite, latent_mask
from .scheduler import epsilon_from_v

FrameLike = np.ndarray | Image.Image
DEFAULTS = EditOptions()
"""The method's defaults, which `__call__`'s keyword arguments show."""


@dataclass
class Pix2VideoOutput:
    """Edited frames (in input order) and what produced them."""

    frames: list[np.ndarray]
    inverted_latents: torch.Tensor  # (N, C, h, w): x_T of each frame (C = 4; SD3: 16)
    final_latents: torch.Tensor  # (N, C, h, w): the last denoising step, before decoding
    depth: torch.Tensor  # per-frame conditioning: SD2 depth (N,1,h,w); control images (N,3k,H,W)
    unet_evaluations: int = 0  # image evaluations: a batched CFG call counts 2
    timings: dict[str, float] = field(default_factory=dict)
    feature_store_peak_bytes: int = 0


class Pix2VideoBase(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """The backbone-independent half of a Pix2Video pipeline (see the module docstring).

    Subclasses register their modules (at least vae, text_encoder, tokenizer, unet,
    scheduler) and call `_init_common()`.
    """

    embedded_guidance: bool = False  # FLUX [dev]: the scale is a model input, never a CFG pair

    def _init_common(self) -> None:
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_evaluations = 0
        self.cancel_event: threading.Event | None = None  # set -> the next UNet call raises

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def size_multiple(self) -> int:
        """What frame sides must be multiples of (a patching transformer asks more)."""
        return self.vae_scale_factor

    def injection(self, options: EditOptions) -> Injection:
        """Where the cross-frame attention goes: the UNet decoder's self-attention (the
        paper's); a transformer backbone overrides it and reads `options.inject_blocks`."""
        if options.inject_blocks is not None:
            raise InputError(
                "inject_blocks chooses a transformer's injected blocks (SD3); a UNet backbone "
                "injects in its decoder's self-attention: leave it out."
            )
        return DecoderSelfAttention(self.unet)

    # ------------------------------------------------------------------ backbone hooks
    def prepare_conditioning(
        self,
        frames: Sequence[FrameLike],
        depth_maps: torch.Tensor | np.ndarray | None = None,
        control_images: Sequence | None = None,
    ) -> torch.Tensor:
        """(N, ...) per-frame conditioning of `frames`, one row per frame."""
        raise NotImplementedError

    def conditioning_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one frame's conditioning row for frames of `height` x `width`."""
        raise NotImplementedError

    def model_output(
        self,
        latent: torch.Tensor,
        conditioning: torch.Tensor,
        t: int,
        text: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        """The raw model output (noise or v) of `batch` rows, as float32."""
        raise NotImplementedError

    # ------------------------------------------------------------------ building blocks
    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, 77, D) text embedding; a prompt longer than the text encoder's context is an error."""
        check_prompt_tokens(prompt, self.tokenizer)
        ids = padded_ids(self.tokenizer, prompt)
        return self.text_encoder(ids.to(self.device))[0]

    def encode_negative_prompt(self, prompt: str) -> torch.Tensor:
        """The unconditional branch's embedding (a backbone may encode "" differently, as SDXL)."""
        return self.encode_prompt(prompt)

    @torch.inference_mode()
    def encode_frames(self, frames: Sequence[FrameLike]) -> torch.Tensor:
        """(N, C, h, w) latents: the VAE posterior mean (not a sample), less the VAE's shift
        (SD3's; none in SD 1/2/XL) times the scaling factor."""
        latents = []
        for frame in frames:
            pixels = torch.from_numpy(np.asarray(frame, dtype=np.float32)).permute(2, 0, 1)[None]
            pixels = (pixels / 127.5 - 1.0).to(device=self.device, dtype=self.vae.dtype)
            posterior = self.vae.encode(pixels).latent_dist
            mean, shift = posterior.mean, self.vae.config.get("shift_factor")
            latents.append((mean - shift if shift else mean) * self.vae.config.scaling_factor)
        return torch.cat(latents).float()

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[np.ndarray]:
        """uint8 RGB frames; like the reference, (x/2 + 0.5) * 255 is truncated, not rounded."""
        frames = []
        for latent in latents:
            latent = latent[None].to(device=self.device, dtype=self.vae.dtype)
            latent = latent / self.vae.config.scaling_factor
            shift = self.vae.config.get("shift_factor")
            image = self.vae.decode(latent + shift if shift else latent).sample
            image = ((image.float().clamp(-1, 1) / 2 + 0.5) * 255).to(torch.uint8)
            frames.append(image[0].permute(1, 2, 0).cpu().numpy())
        return frames

    def predict_noise(
        self,
        latent: torch.Tensor,
        conditioning: torch.Tensor,
        t: int,
        text: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Noise prediction with classifier-free guidance; `text` rows = [uncond, cond] or [cond]
        (`embedded_guidance`: [cond], the scale a model input).

        Both branches go through the model in one batched call; the attention processors
        keep the batch rows (branches) apart. `latent` may hold several frames (batched
        inversion, frame-batched editing), each with its own conditioning row; with
        guidance the batch is [uncond of every frame, cond of every frame] (`model_rows`).
        A v-predicting checkpoint's output is turned into the noise estimate here."""
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise EditCancelled("The edit was cancelled.")
        rows = text.shape[0]
        model_latent, model_conditioning, model_text = model_rows(latent, conditioning, text)
        batch = max(model_latent.shape[0], model_text.shape[0])
        embedded = {"guidance": guidance_scale} if self.embedded_guidance else {}
        out = self.model_output(model_latent, model_conditioning, t, model_text, batch, **embedded)
        self.unet_evaluations += batch
        if rows > 1:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        if self.scheduler.config.get("prediction_type") == "v_prediction":
            alpha_bar_t = self.scheduler.alphas_cumprod[t].to(out.device)
            out = epsilon_from_v(out, latent.float(), alpha_bar_t)
        return out

    def timesteps(self, num_inference_steps: int) -> list[int]:
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps]

    def sampling_schedule(
        self, num_inference_steps: int, latent_size: Sequence[int] | None = None
    ) -> Schedule:
        """The walk inversion and editing take: DDIM for the UNet backbones (a flow-matching
        backbone returns a `core.flow_matching.FlowMatchSchedule`, FLUX's shifted by the
        latents' (h, w), `latent_size`)."""
        return DDIMSchedule.from_scheduler(self.scheduler, num_inference_steps, self.device)

    @torch.inference_mode()
    def invert(
        self,
        latents: torch.Tensor,
        depth: torch.Tensor,
        source_embedding: torch.Tensor,
        num_inference_steps: int = 50,
        progress: ProgressCallback | None = None,
        batch_size: int = 1,
        trajectory: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """DDIM-invert every frame with the source prompt at guidance 1 (`inversion.invert_frames`).

        `depth` is the frames' conditioning (`prepare_conditioning`). Frames invert
        independently, so `batch_size` of them share each model call (faster on a GPU;
        on a CPU see `default_inversion_batch`); batched results differ from one-at-a-time
        ones only by kernel rounding. With `trajectory`, also returns (N, steps, 4, h, w)
        (`inversion.source_trajectory`), what a mask keeps.
        """

        def predict(x: torch.Tensor, frames: slice, t: int) -> torch.Tensor:
            return self.predict_noise(x, depth[frames].to(self.device), t, source_embedding, 1.0)

        return invert_frames(
            predict,
            latents.to(self.device),
            self.sampling_schedule(num_inference_steps, latents.shape[-2:]),
            batch_size=batch_size,
            trajectory=trajectory,
            progress=progress,
        )

    @torch.inference_mode()
    def edit(
        self,
        inverted_latents: torch.Tensor,
        depth: torch.Tensor | FrameConditioning,
        prompt_embedding: torch.Tensor,
        negative_embedding: torch.Tensor,
        options: EditOptions | None = None,
        *,
        progress: ProgressCallback | None = None,
        resume: EditCheckpoint | None = None,
        on_step_end: Callable[[EditCheckpoint], None] | None = None,
        masks: torch.Tensor | None = None,
        source_latents: torch.Tensor | SourceLatents | None = None,
        chain: ChainPlace | None = None,
        **method_options: Any,
    ) -> tuple[torch.Tensor, FeatureStore]:
        """Denoise frames (clip order) from their inverted noise: `edit_loop.EditLoop`.

        `depth` is the frames' conditioning (`prepare_conditioning`), in clip order, or a
        `FrameConditioning` giving it a few frames at a time (a job reads it from disk).
        `options` is the method's `EditOptions`; keyword arguments build one (or change
        the given one): `edit(x_T, depth, text, negative, num_inference_steps=20)`. A
        frame batch of "auto" is measured here (`frame_batch.edit_frame_batch`). `chain` makes this
        one worker of a clip split across workers (`frame_chain`): `inverted_latents`,
        `masks`, `resume`'s latents and the result then hold its positions' rows. Returns
        the final latents (N, 4, h, w) and the feature store (its `chunk_size` is the
        frame batch used).
        """
        options = options.replace(**method_options) if options else EditOptions(**method_options)
        num_frames = chain.num_frames if chain is not None else inverted_latents.shape[0]
        notice = options.unused_frame_batch(num_frames)
        if notice:
            warnings.warn(notice, stacklevel=2)
        text = (
            prompt_embedding
            if options.guidance_scale == 1 or self.embedded_guidance
            else torch.cat([negative_embedding, prompt_embedding])
        )
        rows = depth if callable(depth) else (lambda frames: depth[frames])

        def predict(x: torch.Tensor, frames: list[int], t: int) -> torch.Tensor:
            conditioning = rows(frames).to(self.device)
            return self.predict_noise(x, conditioning, t, text, options.guidance_scale)

        if options.frame_batch == "auto":
            measured = edit_frame_batch(self, options, inverted_latents, rows, text, chain)
            options = options.with_frame_batch(measured)
        loop = EditLoop(
            predict,
            self.sampling_schedule(options.num_inference_steps, inverted_latents.shape[-2:]),
            self.injection(options),
            options,
            num_frames,
            place=chain,
            masks=masks,
            source_latents=source_latents,
            progress=progress,
            on_step_end=on_step_end,
        )
        return loop.run(inverted_latents.to(self.device), resume)

    # ------------------------------------------------------------------ the whole method
    @torch.inference_mode()
    def __call__(
        self,
        frames: Sequence[FrameLike],
        prompt: str,
        source_prompt: str,
        depth_maps: torch.Tensor | np.ndarray | None = None,
        num_inference_steps: int = DEFAULTS.num_inference_steps,
        guidance_scale: float = DEFAULTS.guidance_scale,
        negative_prompt: str = "",
        attend: str = DEFAULTS.attend,
        anchor: str = DEFAULTS.anchor,
        latent_guidance_weight: float = DEFAULTS.latent_guidance_weight,
        latent_guidance_steps: int | None = DEFAULTS.latent_guidance_steps,
        latent_guidance_target: str = DEFAULTS.latent_guidance_target,
        seed: int = DEFAULTS.seed,
        inverted_latents: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        schedule: str = DEFAULTS.schedule,
        feature_store_dtype: torch.dtype | None = DEFAULTS.feature_store_dtype,
        feature_store_device: str | torch.device | None = DEFAULTS.feature_store_device,
        inversion_batch_size: int = 1,
        progress: ProgressCallback | None = None,
        resume: EditCheckpoint | None = None,
        on_step_end: Callable[[EditCheckpoint], None] | None = None,
        masks: Sequence[np.ndarray] | None = None,
        control_images: Sequence | None = None,
        frame_batch: int | str = DEFAULTS.frame_batch,
        inject_blocks: Sequence[int] | None = DEFAULTS.inject_blocks,
    ) -> Pix2VideoOutput:
        """Edit `frames` so they show `prompt`, consistently across the clip.

        Args:
            frames: RGB frames (H x W x 3 uint8 arrays or PIL images), all the same size,
                sides multiples of 8.
            prompt: the edit prompt (describes the result).
            source_prompt: describes the input; used for inversion.
            depth_maps: SD2-depth: optional raw depth per frame, (N, H', W'); -1 marks
                background. Estimated with the checkpoint's depth estimator when omitted.
            num_inference_steps: DDIM steps (reference: 50).
            guidance_scale: classifier-free guidance scale of the edit (reference: 7.5).
            negative_prompt: the unconditional prompt (reference: "").
            attend: which edited frames the decoder self-attention reads:
                `anchor+previous` (the paper), `anchor`, `previous`, `anchor+random`, or
                `none` (independent per-frame editing).
            anchor: `first` (frame 0) or `last` (the clip is processed from its end).
            latent_guidance_weight: weight of the guided latent update (reference 100; 0 = off).
            latent_guidance_steps: how many initial steps are guided (default steps//2 + 1,
                26 of 50 as in the reference).
            latent_guidance_target: `same-step` (the previous frame's x0 at the same step) or
                `step:K` (its x0 at step index K).
            seed: only `anchor+random` draws random numbers; the edit is otherwise
                deterministic (every frame starts from its own inverted noise).
            inverted_latents: reuse x_T from an earlier inversion (same frames, prompt,
                conditioning, steps).
            depth: reuse the prepared conditioning from `prepare_conditioning` (e.g. cached):
                SD2-depth's normalised depth (N, 1, h, w), a ControlNet's control images.
            schedule: `auto`, `frame` or `step`: processing order (same result; `step`
                needs far less memory and is chosen by `auto` whenever possible).
            feature_store_dtype / feature_store_device: keep injected features in another
                precision or on another device (memory for exactness/speed).
            inversion_batch_size: frames per model call during inversion (see `invert`).
            progress: callback(stage, done, total).
            resume / on_step_end: continue from / receive step checkpoints (see `edit`).
            masks: a local edit: per frame, an (H, W) alpha in [0, 1] (or bool), 1 = edit.
                Outside its support the latents follow the frame's inversion; the decoded
                frame is composited over the source through it, so pixels where it is 0
                are the source's exactly. `masks.mask_alpha` grows and softens a mask.
            control_images: ControlNet pipelines: per frame, one RGB control image per
                ControlNet (`control.py` makes canny and depth images).
            frame_batch: frames per editing model call in step-by-step order (1 = one at
                a time; "auto": `frame_batch.measure_frame_batch`); the result equals one at a time up
                to float rounding.
            inject_blocks: a transformer backbone's injected blocks (SD3's joint blocks,
                `core.joint_attention`); None: its default set. Not for UNet backbones.
        """
        # 1. check inputs: the method's options once (EditOptions), then the rest
        options = EditOptions(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            attend=attend,
            anchor=anchor,
            latent_guidance_weight=latent_guidance_weight,
            latent_guidance_steps=latent_guidance_steps,
            latent_guidance_target=latent_guidance_target,
            seed=seed,
            schedule=schedule,
            frame_batch=frame_batch,
            feature_store_dtype=feature_store_dtype,
            feature_store_device=feature_store_device,
            inject_blocks=inject_blocks,
        )
        self.check_inputs(
            frames,
            prompt,
            source_prompt,
            options,
            depth_maps=depth_maps,
            negative_prompt=negative_prompt,
            inverted_latents=inverted_latents,
            depth=depth,
            inversion_batch_size=inversion_batch_size,
            masks=masks,
        )
        # 2. encode the prompts (first: a bad one fails fast)
        edit_embedding = self.encode_prompt(prompt)
        negative_embedding = self.encode_negative_prompt(negative_prompt)
        source_embedding = self.encode_prompt(source_prompt) if inverted_latents is None else None
        timings: dict[str, float] = {}
        evaluations_before = self.unet_evaluations
        frames = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames]

        # 3. per-frame conditioning (depth, control images)
        tic = time.perf_counter()
        if depth is None:
            depth = self.prepare_conditioning(frames, depth_maps, control_images)
        timings["depth"] = time.perf_counter() - tic

        # 4. DDIM inversion of every frame with the source prompt
        tic = time.perf_counter()
        latent_masks = source_latents = None
        if masks is not None:
            latent_masks = torch.stack(
                [torch.from_numpy(latent_mask(m, self.vae_scale_factor))[None] for m in masks]
            ).to(self.device)
        if inverted_latents is None:
            latents = self.encode_frames(frames)
            inverted = self.invert(
                latents,
                depth,
                source_embedding,
                options.num_inference_steps,
                progress,
                batch_size=inversion_batch_size,
                trajectory=masks is not None,
            )
            inverted_latents, source_latents = inverted if masks is not None else (inverted, None)
        timings["inversion"] = time.perf_counter() - tic

        # 5. editing, anchor frame first (core.edit_loop)
        tic = time.perf_counter()
        final, store = self.edit(
            inverted_latents.to(self.device),
            depth,
            edit_embedding,
            negative_embedding,
            options,
            progress=progress,
            resume=resume,
            on_step_end=on_step_end,
            masks=latent_masks,
            source_latents=source_latents,
        )
        timings["editing"] = time.perf_counter() - tic

        # 6. decoding (a local edit is composited over the source)
        tic = time.perf_counter()
        edited = self.decode_latents(final)
        if masks is not None:
            edited = [
                composite(f, e, np.asarray(m, np.float32))
                for f, e, m in zip(frames, edited, masks, strict=True)
            ]
        timings["decoding"] = time.perf_counter() - tic
        return Pix2VideoOutput(
            frames=edited,
            inverted_latents=inverted_latents.cpu(),
            final_latents=final.cpu(),
            depth=depth.cpu(),
            unet_evaluations=self.unet_evaluations - evaluations_before,
            timings=timings,
            feature_store_peak_bytes=store.peak_nbytes,
        )

    def check_inputs(
        self,
        frames: Sequence[FrameLike],
        prompt: str,
        source_prompt: str | None,
        options: EditOptions,
        **given: Any,
    ) -> None:
        """Validate what `__call__` takes besides the method's `options` (checked when built),
        before any model work; one `InputError` each (`inputs.check_call_inputs`), and
        `options.inject_blocks` against this model (`injection`)."""
        check_call_inputs(self, frames, prompt, source_prompt, options, **given)
        self.injection(options)
