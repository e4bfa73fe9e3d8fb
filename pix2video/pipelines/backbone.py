"""What every Pix2Video pipeline shares, whatever its backbone: `Pix2VideoBase`.

A backbone pipeline (SD2-depth in `pipeline.py`, SD 1.5 + ControlNet in `controlnet.py`)
says only how its conditioning is made and how one model evaluation reads it:

- `prepare_conditioning(frames, ...)`: per-frame conditioning (depth at latent size for
  SD2-depth; control images at pixel size for ControlNets), one row per frame;
- `model_output(x, conditioning, t, text, batch)`: the raw UNet output for a batch.

Everything else is here, once: prompts, VAE encoding/decoding (as the reference does it),
classifier-free guidance in one batched call, the v-prediction to noise conversion,
cancellation, the DDIM schedule, and the calls into the backbone-free core
(`editing.invert_frames`, `editing.edit_frames`). `__call__` is the whole method and
reads like the paper: check inputs, encode prompts, conditioning, inversion, editing,
decoding.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from PIL import Image

from ..core.attention import FeatureStore, cross_frame_attention, reference_plan
from ..core.editing import (
    DDIMSchedule,
    EditCheckpoint,
    FrameConditioning,
    ProgressCallback,
    SourceLatents,
    anchor_order,
    edit_frames,
    invert_frames,
    processing_order,
)
from ..core.frame_chain import ChainPlace
from ..core.guidance import latent_guidance_schedule
from ..errors import EditCancelled, InputError, ModelNotAvailableError
from ..settings import ANCHORS, ATTEND_MODES, MAX_GUIDANCE_SCALE, SCHEDULES, parse_frame_batch
from .masks import composite, latent_mask

FrameLike = np.ndarray | Image.Image
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
"""What a checkpoint may predict: the noise, or v (converted to the noise estimate)."""
CPU_FRAME_BATCH = 1
"""`frame_batch="auto"` on a CPU: what benchmarks/frame_batch.py measured fastest there."""
GPU_MEMORY_MARGIN = 0.1
"""Share of the GPU's memory `frame_batch="auto"` leaves free (allocator slack, decoding)."""


@dataclass
class Pix2VideoOutput:
    """Edited frames (in input order) and what produced them."""

    frames: list[np.ndarray]
    inverted_latents: torch.Tensor  # (N, 4, h, w): x_T of each frame
    final_latents: torch.Tensor  # (N, 4, h, w): the last denoising step, before decoding
    depth: torch.Tensor  # per-frame conditioning: SD2 depth (N,1,h,w); control images (N,3k,H,W)
    unet_evaluations: int = 0  # image evaluations: a batched CFG call counts 2
    timings: dict[str, float] = field(default_factory=dict)
    feature_store_peak_bytes: int = 0


def reference_scheduler(config) -> DDIMScheduler:
    """DDIM as the reference configures it: no clipping, final alpha = alphas_cumprod[0], offset 0.

    The checkpoint's prediction type is kept (epsilon or v); any other is refused.
    """
    prediction_type = dict(config).get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelNotAvailableError(
            f"The checkpoint predicts '{prediction_type}', which DDIM inversion cannot use; "
            f"use a checkpoint that predicts {' or '.join(PREDICTION_TYPES)}."
        )
    return DDIMScheduler.from_config(
        config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )


def epsilon_from_v(v: torch.Tensor, x: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The noise estimate of a v-prediction: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t."""
    return alpha_bar_t**0.5 * v + (1 - alpha_bar_t) ** 0.5 * x


class Pix2VideoBase(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """The backbone-independent half of a Pix2Video pipeline (see the module docstring).

    Subclasses register their modules (at least vae, text_encoder, tokenizer, unet,
    scheduler) and call `_init_common()`.
    """

    def _init_common(self) -> None:
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_evaluations = 0
        self.cancel_event: threading.Event | None = None  # set -> the next UNet call raises

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
        max_length = self.tokenizer.model_max_length
        n_tokens = len(self.tokenizer(prompt, truncation=False).input_ids)
        if n_tokens > max_length:
            raise InputError(
                f"The prompt {prompt[:40]!r}... has {n_tokens} tokens; the text encoder reads at most "
                f"{max_length} (including start and end): shorten it."
            )
        ids = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def encode_negative_prompt(self, prompt: str) -> torch.Tensor:
        """The unconditional branch's embedding (a backbone may encode "" differently, as SDXL)."""
        return self.encode_prompt(prompt)

    @torch.inference_mode()
    def encode_frames(self, frames: Sequence[FrameLike]) -> torch.Tensor:
        """(N, 4, h, w) latents: the VAE posterior mean (not a sample) times the scaling factor."""
        latents = []
        for frame in frames:
            pixels = torch.from_numpy(np.asarray(frame, dtype=np.float32)).permute(2, 0, 1)[None]
            pixels = (pixels / 127.5 - 1.0).to(device=self.device, dtype=self.vae.dtype)
            posterior = self.vae.encode(pixels).latent_dist
            latents.append(posterior.mean * self.vae.config.scaling_factor)
        return torch.cat(latents).float()

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[np.ndarray]:
        """uint8 RGB frames; like the reference, (x/2 + 0.5) * 255 is truncated, not rounded."""
        frames = []
        for latent in latents:
            latent = latent[None].to(device=self.device, dtype=self.vae.dtype)
            image = self.vae.decode(latent / self.vae.config.scaling_factor).sample
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
        """Noise prediction with classifier-free guidance; `text` rows = [uncond, cond] or [cond].

        Both branches go through the model in one batched call; the attention processors
        keep the batch rows (branches) apart. `latent` may hold several frames (batched
        inversion, frame-batched editing), each with its own conditioning row; with
        guidance the batch is [uncond of every frame, cond of every frame]
        (`model_rows`). A v-predicting checkpoint's output is turned into the noise
        estimate here, so inversion and editing both see noise.
        """
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise EditCancelled("The edit was cancelled.")
        rows = text.shape[0]
        model_latent, model_conditioning, model_text = model_rows(latent, conditioning, text)
        batch = max(model_latent.shape[0], model_text.shape[0])
        out = self.model_output(model_latent, model_conditioning, t, model_text, batch)
        self.unet_evaluations += batch
        if rows > 1:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        if self.scheduler.config.prediction_type == "v_prediction":
            alpha_bar_t = self.scheduler.alphas_cumprod[t].to(out.device)
            out = epsilon_from_v(out, latent.float(), alpha_bar_t)
        return out

    def timesteps(self, num_inference_steps: int) -> list[int]:
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps]

    def ddim_schedule(self, num_inference_steps: int) -> DDIMSchedule:
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
        """DDIM-invert every frame with the source prompt at guidance 1 (`editing.invert_frames`).

        `depth` is the frames' conditioning (`prepare_conditioning`). Frames invert
        independently, so `batch_size` of them share each model call (faster on a GPU;
        on a CPU see `default_inversion_batch`); batched results differ from one-at-a-time
        ones only by kernel rounding. With `trajectory`, also returns (N, steps, 4, h, w)
        (`editing.source_trajectory`), what a mask keeps.
        """

        def predict(x: torch.Tensor, frames: slice, t: int) -> torch.Tensor:
            return self.predict_noise(x, depth[frames].to(self.device), t, source_embedding, 1.0)

        return invert_frames(
            predict,
            latents.to(self.device),
            self.ddim_schedule(num_inference_steps),
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
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        attend: str = "anchor+previous",
        anchor: str = "first",
        latent_guidance_weight: float = 100.0,
        latent_guidance_steps: int | None = None,
        latent_guidance_target: str = "same-step",
        seed: int = 0,
        schedule: str = "auto",
        feature_store_dtype: torch.dtype | None = None,
        feature_store_device: str | torch.device | None = None,
        progress: ProgressCallback | None = None,
        resume: EditCheckpoint | None = None,
        on_step_end: Callable[[EditCheckpoint], None] | None = None,
        masks: torch.Tensor | None = None,
        source_latents: torch.Tensor | SourceLatents | None = None,
        frame_batch: int | str = 1,
        chain: ChainPlace | None = None,
    ) -> tuple[torch.Tensor, FeatureStore]:
        """Denoise frames (clip order) from their inverted noise: `editing.edit_frames`.

        `depth` is the frames' conditioning (`prepare_conditioning`), in clip order, or a
        `FrameConditioning` giving it a few frames at a time (a job reads it from disk); the
        other arguments are those of `editing.edit_frames` (`schedule` is its `order`);
        `frame_batch` may be "auto" (`auto_frame_batch`). Returns the final latents
        (N, 4, h, w) in clip order and the feature store (its `chunk_size` is the frame
        batch used).
        """
        text = (
            prompt_embedding
            if guidance_scale == 1
            else torch.cat([negative_embedding, prompt_embedding])
        )

        rows = depth if callable(depth) else (lambda frames: depth[frames])

        def predict(x: torch.Tensor, frames: list[int], t: int) -> torch.Tensor:
            return self.predict_noise(x, rows(frames).to(self.device), t, text, guidance_scale)

        frame_batch = parse_frame_batch(frame_batch)
        if frame_batch == "auto":
            row_rows = rows  # conditioning by row of `inverted_latents`
            if chain is not None:  # rows are the worker's positions, `rows` takes clip indices
                clip, mine = anchor_order(chain.split.num_frames, anchor), chain.positions
                row_rows = lambda index: rows([clip[mine[i]] for i in index])  # noqa: E731
            frame_batch = self.auto_frame_batch(inverted_latents, row_rows, text, attend)

        return edit_frames(
            predict,
            inverted_latents.to(self.device),
            self.ddim_schedule(num_inference_steps),
            self.unet,
            attend=attend,
            anchor=anchor,
            latent_guidance_weight=latent_guidance_weight,
            latent_guidance_steps=latent_guidance_steps,
            latent_guidance_target=latent_guidance_target,
            seed=seed,
            order=schedule,
            feature_store_dtype=feature_store_dtype,
            feature_store_device=feature_store_device,
            progress=progress,
            resume=resume,
            on_step_end=on_step_end,
            masks=masks,
            source_latents=source_latents,
            frame_batch=frame_batch,
            chain=chain,
        )

    def auto_frame_batch(
        self,
        inverted_latents: torch.Tensor,
        conditioning: FrameConditioning,
        text: torch.Tensor,
        attend: str = "anchor+previous",
    ) -> int:
        """Frames per editing UNet call for `frame_batch="auto"`, capped by the clip.

        On a CPU, what `benchmarks/frame_batch.py` measured fastest (`CPU_FRAME_BATCH`).
        On a GPU, the most frames that fit the free memory with a margin: one editing call
        of 2 and one of 4 frames (with the cross-frame attention, at the clip's size and
        text rows) measure the memory a frame adds; neither is counted as an evaluation.
        """
        num_frames = inverted_latents.shape[0]
        if self.device.type != "cuda" or num_frames == 1:
            return min(CPU_FRAME_BATCH, num_frames)
        device = self.device
        t = self.scheduler.config.num_train_timesteps - 1
        peaks = []
        for n in (2, 4):
            index = [min(i, num_frames - 1) for i in range(n)]
            store = FeatureStore(reference_plan(n, attend), chunk_size=n)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            latent, rows, texts = model_rows(
                inverted_latents[index].to(device), conditioning(index).to(device), text
            )
            with cross_frame_attention(self.unet, store), store.chunk_step(range(n), 0):
                self.model_output(latent, rows, t, texts, max(len(latent), len(texts)))
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - before)
            del store, latent, rows, texts
        per_frame = max((peaks[1] - peaks[0]) / 2, 1)
        fixed = max(peaks[0] - 2 * per_frame, 0)
        free, total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return frames_that_fit(free - fixed, per_frame, total, num_frames)

    # ------------------------------------------------------------------ the whole method
    @torch.inference_mode()
    def __call__(
        self,
        frames: Sequence[FrameLike],
        prompt: str,
        source_prompt: str,
        depth_maps: torch.Tensor | np.ndarray | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        attend: str = "anchor+previous",
        anchor: str = "first",
        latent_guidance_weight: float = 100.0,
        latent_guidance_steps: int | None = None,
        latent_guidance_target: str = "same-step",
        seed: int = 0,
        inverted_latents: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        schedule: str = "auto",
        feature_store_dtype: torch.dtype | None = None,
        feature_store_device: str | torch.device | None = None,
        inversion_batch_size: int = 1,
        progress: ProgressCallback | None = None,
        resume: EditCheckpoint | None = None,
        on_step_end: Callable[[EditCheckpoint], None] | None = None,
        masks: Sequence[np.ndarray] | None = None,
        control_images: Sequence | None = None,
        frame_batch: int | str = 1,
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
                a time; "auto": `auto_frame_batch`); the result equals one at a time up
                to float rounding.
        """
        self.check_inputs(
            frames,
            prompt,
            source_prompt,
            depth_maps=depth_maps,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            attend=attend,
            anchor=anchor,
            latent_guidance_weight=latent_guidance_weight,
            latent_guidance_steps=latent_guidance_steps,
            latent_guidance_target=latent_guidance_target,
            seed=seed,
            inverted_latents=inverted_latents,
            depth=depth,
            schedule=schedule,
            inversion_batch_size=inversion_batch_size,
            masks=masks,
            frame_batch=frame_batch,
        )
        edit_embedding = self.encode_prompt(prompt)  # prompts first: a bad one fails fast
        negative_embedding = self.encode_negative_prompt(negative_prompt)
        source_embedding = self.encode_prompt(source_prompt) if inverted_latents is None else None
        timings: dict[str, float] = {}
        evaluations_before = self.unet_evaluations
        frames = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames]

        tic = time.perf_counter()
        if depth is None:
            depth = self.prepare_conditioning(frames, depth_maps, control_images)
        timings["depth"] = time.perf_counter() - tic

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
                num_inference_steps,
                progress,
                batch_size=inversion_batch_size,
                trajectory=masks is not None,
            )
            inverted_latents, source_latents = inverted if masks is not None else (inverted, None)
        timings["inversion"] = time.perf_counter() - tic

        tic = time.perf_counter()
        final, store = self.edit(
            inverted_latents.to(self.device),
            depth,
            edit_embedding,
            negative_embedding,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            attend=attend,
            anchor=anchor,
            latent_guidance_weight=latent_guidance_weight,
            latent_guidance_steps=latent_guidance_steps,
            latent_guidance_target=latent_guidance_target,
            seed=seed,
            schedule=schedule,
            feature_store_dtype=feature_store_dtype,
            feature_store_device=feature_store_device,
            progress=progress,
            resume=resume,
            on_step_end=on_step_end,
            masks=latent_masks,
            source_latents=source_latents,
            frame_batch=frame_batch,
        )
        timings["editing"] = time.perf_counter() - tic

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
        depth_maps: torch.Tensor | np.ndarray | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        attend: str = "anchor+previous",
        anchor: str = "first",
        latent_guidance_weight: float = 100.0,
        latent_guidance_steps: int | None = None,
        latent_guidance_target: str = "same-step",
        seed: int = 0,
        inverted_latents: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        schedule: str = "auto",
        inversion_batch_size: int = 1,
        masks: Sequence[np.ndarray] | None = None,
        frame_batch: int | str = 1,
    ) -> None:
        """Validate every argument of `__call__` before any model work; one `InputError` each."""
        if len(frames) == 0:
            raise InputError("There are no frames to edit.")
        sizes = {
            np.asarray(f).shape[:2] if not isinstance(f, Image.Image) else f.size[::-1]
            for f in frames
        }
        if len(sizes) > 1:
            raise InputError(f"All frames must have the same size, got {sorted(sizes)}.")
        height, width = sizes.pop()
        multiple = self.vae_scale_factor
        if height % multiple or width % multiple or not height or not width:
            raise InputError(f"Frame sides must be multiples of {multiple}, got {width}x{height}.")
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(text, str):
                raise InputError(f"{name} must be a string; got {type(text).__name__}.")
        if inverted_latents is None and not isinstance(source_prompt, str):
            raise InputError("source_prompt must be a string describing the input frames.")
        if attend not in ATTEND_MODES:
            raise InputError(f"attend must be one of {', '.join(ATTEND_MODES)}; got {attend!r}.")
        if anchor not in ANCHORS:
            raise InputError(f"anchor must be one of {', '.join(ANCHORS)}; got {anchor!r}.")
        if schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}.")
        max_steps = self.scheduler.config.num_train_timesteps
        if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= max_steps:
            raise InputError(
                f"The number of steps must be between 1 and {max_steps}; got {num_inference_steps}."
            )
        for name, value, hi in (
            ("guidance_scale", guidance_scale, MAX_GUIDANCE_SCALE),
            ("latent_guidance_weight", latent_guidance_weight, math.inf),
        ):
            if (
                not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0 <= value <= hi
            ):
                raise InputError(
                    f"{name} must be a finite number >= 0 (and <= {hi:g}); got {value}."
                )
        if not isinstance(inversion_batch_size, int) or inversion_batch_size < 1:
            raise InputError(f"inversion_batch_size must be >= 1; got {inversion_batch_size!r}.")
        parse_frame_batch(frame_batch)
        if not isinstance(seed, int):
            raise InputError(f"seed must be a whole number; got {seed!r}.")
        if latent_guidance_steps is not None and (
            not isinstance(latent_guidance_steps, int) or latent_guidance_steps < 0
        ):
            raise InputError(f"latent_guidance_steps must be >= 0; got {latent_guidance_steps!r}.")
        target_of = latent_guidance_schedule(
            num_inference_steps,
            latent_guidance_weight,
            latent_guidance_steps,
            latent_guidance_target,
        )
        processing_order(1, 1, schedule, target_of)  # a schedule that cannot work fails now
        n, h, w = len(frames), height // multiple, width // multiple
        if depth_maps is not None and (len(depth_maps) != n or np.ndim(depth_maps) not in (3, 4)):
            raise InputError(
                f"Expected {n} depth maps of shape (height, width), got an array of shape "
                f"{tuple(np.shape(depth_maps))}."
            )
        for name, tensor, shape in (
            ("inverted_latents", inverted_latents, (n, 4, h, w)),
            ("depth", depth, (n, *self.conditioning_shape(height, width))),
        ):
            if tensor is not None and tuple(tensor.shape) != shape:
                raise InputError(f"{name} must have shape {shape}; got {tuple(tensor.shape)}.")
        if masks is not None:
            if inverted_latents is not None:
                raise InputError(
                    "A local edit (masks) inverts the frames itself (it keeps each frame's "
                    "inversion trajectory); do not pass inverted_latents with masks."
                )
            shapes = {np.shape(m) for m in masks}
            if len(masks) != n or shapes != {(height, width)}:
                raise InputError(
                    f"Expected {n} masks of {height}x{width} (one per frame, height x width); got "
                    f"{len(masks)} of shapes {sorted(shapes)}."
                )


def model_rows(
    latent: torch.Tensor, conditioning: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, conditioning, text) batch rows of one model call over n frames.

    One frame, or one text row: as given (a backbone expands them to the batch). n frames
    with guidance ([uncond, cond] text rows): branch-major, [uncond of frames 0..n-1, cond
    of frames 0..n-1], so the output splits into the two branches with `chunk(2)` and the
    attention processors find frame j of each branch at rows j and n + j (`split_rows`).
    """
    rows, frames = text.shape[0], latent.shape[0]
    if frames == 1 or rows == 1:
        return latent, conditioning, text
    repeat = (rows, *[1] * (conditioning.ndim - 1))
    return (
        latent.repeat(rows, 1, 1, 1),
        conditioning.repeat(repeat),
        text.repeat_interleave(frames, dim=0),
    )


def frames_that_fit(
    free_bytes: float, per_frame_bytes: float, total_bytes: float, frames: int
) -> int:
    """How many frames one editing call may take: `free_bytes` less a margin, per frame, capped by the clip."""
    budget = free_bytes - GPU_MEMORY_MARGIN * total_bytes
    return max(1, min(frames, int(budget // per_frame_bytes)))


def default_inversion_batch(device: str | torch.device) -> int:
    """Frames per inversion model call when the user does not choose: what measured fastest.

    On a GPU a batch fills the device (8 frames). On our 2-core CPUs a batch of frames is no
    faster than one frame at a time for the tiny model (benchmarks/README.md), so 1.
    """
    return 8 if torch.device(device).type == "cuda" else 1
