"""The Pix2Video pipeline: depth, DDIM inversion, then frame-by-frame editing.

Reads like the paper's algorithm (and `ALGORITHM.md`, which states what the authors'
code does):

1. depth of every frame (the checkpoint's estimator, or maps given by the caller);
2. DDIM inversion of every frame with the *source* prompt, guidance 1 (conditional branch
   only), giving each frame its own starting noise x_T;
3. DDIM sampling of every frame from its x_T with the *edit* prompt and classifier-free
   guidance (both branches in one batched UNet call), where
   - the decoder self-attention of frame i reads keys/values from the anchor's and the
     previous frame's features at the same step (`attention.py`), and
   - during the first half of the steps the latent is pulled towards the previous frame's
     predicted clean latent (`guidance.py`);
4. VAE decoding.

Frame i at step s depends only on frames < i at step s (and on its own earlier steps), so
the frames can be advanced step by step ("step-major") instead of frame by frame: the
result is the same and the feature store then holds a single step's features. Frame-major
order is used when a later step's prediction is the guidance target (`step:K`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from PIL import Image

from .attention import FeatureStore, cross_frame_attention, reference_plan
from .depth import estimate_depth, normalize_depth
from .errors import EditCancelled, InputError, ModelNotAvailableError
from .guidance import guided_latent_update, latent_guidance_schedule, needs_frame_major
from .inversion import ddim_invert, ddim_sample_step
from .masks import composite, latent_mask
from .models import DEFAULT_MODEL, load_pretrained
from .settings import ANCHORS, ATTEND_MODES, MAX_GUIDANCE_SCALE, SCHEDULES

ProgressCallback = Callable[[str, int, int], None]
"""progress(stage, done, total), stage "inversion" (frames) or "editing" (frame-steps)."""

FrameLike = np.ndarray | Image.Image


@dataclass
class Pix2VideoOutput:
    """Edited frames (in input order) and what produced them."""

    frames: list[np.ndarray]
    inverted_latents: torch.Tensor  # (N, 4, h, w): x_T of each frame
    final_latents: torch.Tensor  # (N, 4, h, w): the last denoising step, before decoding
    depth: torch.Tensor  # (N, 1, h, w): normalised depth fed to the UNet
    unet_evaluations: int = 0  # image evaluations: a batched CFG call counts 2
    timings: dict[str, float] = field(default_factory=dict)
    feature_store_peak_bytes: int = 0


@dataclass
class EditCheckpoint:
    """State of a step-major edit after every frame has finished step `step`."""

    step: int
    latents: torch.Tensor  # (N, 4, h, w), processing order
    x0_targets: dict[tuple[int, int], torch.Tensor]  # predictions later guided steps still need


def reference_scheduler(config) -> DDIMScheduler:
    """DDIM as the reference configures it: no clipping, final alpha = alphas_cumprod[0], offset 0."""
    return DDIMScheduler.from_config(
        config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


class Pix2VideoPipeline(DiffusionPipeline):
    """Text-guided video editing with a depth-conditioned Stable Diffusion 2 checkpoint.

    Built from the components of `stabilityai/stable-diffusion-2-depth` (or any checkpoint
    of that layout): `Pix2VideoPipeline.from_pretrained(hub_id_or_folder)`. The scheduler
    is replaced by DDIM configured as in the reference implementation.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["depth_estimator", "feature_extractor"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        depth_estimator=None,
        feature_extractor=None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=reference_scheduler(scheduler.config),
            depth_estimator=depth_estimator,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_evaluations = 0
        self.cancel_event: threading.Event | None = None  # set -> the next UNet call raises

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

    @torch.inference_mode()
    def prepare_depth(
        self, frames: Sequence[FrameLike], depth_maps: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """(N, 1, h, w) normalised depth at latent resolution, estimated unless given."""
        height, width = np.asarray(frames[0]).shape[:2]
        if depth_maps is None:
            if self.depth_estimator is None or self.feature_extractor is None:
                raise InputError("This model has no depth estimator: pass precomputed depth maps.")
            # one frame at a time: every caller (clip, job, preview) gets bitwise the same maps
            depth_maps = estimate_depth(
                self.depth_estimator, self.feature_extractor, frames, batch_size=1
            )
        depth_maps = torch.as_tensor(
            np.asarray(depth_maps) if not torch.is_tensor(depth_maps) else depth_maps
        )
        if depth_maps.ndim == 4 and depth_maps.shape[1] == 1:
            depth_maps = depth_maps[:, 0]
        if depth_maps.ndim != 3 or depth_maps.shape[0] != len(frames):
            raise InputError(
                f"Expected {len(frames)} depth maps of shape (height, width), got an array of shape "
                f"{tuple(depth_maps.shape)}."
            )
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        return normalize_depth(depth_maps, size).to(self.device)

    def predict_noise(
        self,
        latent: torch.Tensor,
        depth: torch.Tensor,
        t: int,
        text: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Noise prediction with classifier-free guidance; `text` rows = [uncond, cond] or [cond].

        Both branches go through the UNet in one batched call; the attention processors keep
        the batch rows (branches) apart. Without guidance (`text` = [cond]) `latent` may hold
        several frames (batched inversion), each a row of the UNet batch.
        """
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise EditCancelled("The edit was cancelled.")
        rows, frames = text.shape[0], latent.shape[0]
        if frames > 1 and rows > 1:
            raise ValueError("Only unguided predictions (one text row) take several frames.")
        batch = max(rows, frames)
        model_input = (
            torch.cat([latent, depth], dim=1).to(self.unet.dtype).expand(batch, -1, -1, -1)
        )
        text = text.to(self.unet.dtype).expand(batch, -1, -1)
        eps = self.unet(model_input, t, encoder_hidden_states=text).sample.float()
        self.unet_evaluations += batch
        if rows == 1:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def timesteps(self, num_inference_steps: int) -> list[int]:
        self.scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps]

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
        """DDIM-invert every frame with the source prompt at guidance 1.

        Frames invert independently, so `batch_size` of them share each UNet call (faster
        on a GPU; on a CPU see `default_inversion_batch`). Batched results differ from
        one-at-a-time ones only by kernel rounding (well within the reference tolerance).
        With `trajectory`, also returns (N, steps, 4, h, w): at index s, the latent at the
        noise level that editing step s lands on (`source_trajectory`), what a mask keeps.
        """
        timesteps = self.timesteps(num_inference_steps)
        alphas = self.scheduler.alphas_cumprod.to(self.device)
        final_alpha = self.scheduler.final_alpha_cumprod.to(self.device)
        inverted, trajectories = [], []
        for start in range(0, len(latents), batch_size):
            chunk = slice(start, start + batch_size)

            def predict(x: torch.Tensor, t: int, d: torch.Tensor = depth[chunk]) -> torch.Tensor:
                return self.predict_noise(x, d.to(self.device), t, source_embedding, 1.0)

            x = latents[chunk].to(self.device)
            levels = [x]  # the clean latent, then each inversion step's result

            def record(i: int, t: int, latent: torch.Tensor, levels: list = levels) -> None:
                levels.append(latent)

            inverted.append(
                ddim_invert(
                    predict, x, timesteps, alphas, final_alpha, record if trajectory else None
                )
            )
            if trajectory:
                trajectories.append(source_trajectory(levels))
            if progress:
                progress("inversion", min(start + batch_size, len(latents)), len(latents))
        if trajectory:
            return torch.cat(inverted), torch.cat(trajectories)
        return torch.cat(inverted)

    @torch.inference_mode()
    def edit(
        self,
        inverted_latents: torch.Tensor,
        depth: torch.Tensor,
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
        source_latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, FeatureStore]:
        """Denoise frames (given in clip order) from their inverted noise, anchor first.

        The frames are processed in *anchor order*: position 0 is the anchor frame (the
        clip's first frame, or its last with `anchor="last"`, when the clip is processed
        from its end), position i attends to earlier positions. In step-major order every
        completed step is a consistent state (`EditCheckpoint`, latents in anchor order):
        `on_step_end` receives it (it is not called in frame-major order), and `resume`
        continues from it with the same result as an uninterrupted run (the features of
        the next step are produced afresh).
        A local edit passes `masks` (N, 1, h, w) bool at latent resolution (True = edit) and
        `source_latents`, the inversion trajectories from `invert(trajectory=True)`: after
        every step, the latent outside the mask is the frame's own source latent at the same
        noise level (blended latent diffusion), so only the masked region changes.
        Returns the final latents (N, 4, h, w) in clip order and the feature store (for its
        byte counts).
        """
        num_frames = inverted_latents.shape[0]
        order = anchor_order(num_frames, anchor)
        inverted_latents, depth = inverted_latents[order], depth[order]
        if (masks is None) != (source_latents is None):
            raise ValueError("A local edit needs both masks and source latents.")
        if masks is not None:
            masks, source_latents = masks[order], source_latents[order]
        timesteps = self.timesteps(num_inference_steps)
        step_ratio = self.scheduler.config.num_train_timesteps // num_inference_steps
        alphas = self.scheduler.alphas_cumprod.to(self.device)
        final_alpha = self.scheduler.final_alpha_cumprod.to(self.device)
        text = (
            prompt_embedding
            if guidance_scale == 1
            else torch.cat([negative_embedding, prompt_embedding])
        )

        target_of = latent_guidance_schedule(
            num_inference_steps,
            latent_guidance_weight,
            latent_guidance_steps,
            latent_guidance_target,
        )
        last_use = {
            k: max(s for s, k2 in target_of.items() if k2 == k) for k in set(target_of.values())
        }
        steps = _processing_order(num_frames, num_inference_steps, schedule, target_of)
        step_major = num_frames == 1 or steps[1][1] == steps[0][1]
        if resume is not None and not step_major:
            raise InputError("Resuming needs step-by-step processing (schedule 'step').")
        if not step_major:
            on_step_end = None  # frame by frame, no step boundary is a consistent state

        plan = reference_plan(num_frames, attend, seed)
        store = FeatureStore(plan, dtype=feature_store_dtype, device=feature_store_device)
        latents = [x[None].to(self.device) for x in inverted_latents]
        x0_targets: dict[tuple[int, int], torch.Tensor] = {}
        if resume is not None:
            latents = [x[None].to(self.device) for x in resume.latents]
            x0_targets = {k: v.to(self.device) for k, v in resume.x0_targets.items()}
            steps = [(p, s) for p, s in steps if s > resume.step]
        done = num_frames * num_inference_steps - len(steps)
        injection = cross_frame_attention(self.unet, store) if attend != "none" else nullcontext()
        with injection:
            for position, step in steps:
                t = timesteps[step]
                with store.frame_step(position, step):
                    eps = self.predict_noise(
                        latents[position], depth[position][None], t, text, guidance_scale
                    )
                latent, x0 = ddim_sample_step(
                    latents[position], eps, t, step_ratio, alphas, final_alpha
                )
                if position > 0 and step in target_of:
                    key = (position - 1, target_of[step])
                    latent = guided_latent_update(
                        latent, x0, x0_targets[key], latent_guidance_weight
                    )
                    if last_use[key[1]] == step:
                        del x0_targets[key]
                if masks is not None:  # outside the mask, the source at this noise level
                    source = source_latents[position, step][None].to(latent.device)
                    latent = torch.where(masks[position][None].to(latent.device), latent, source)
                if position + 1 < num_frames and step in last_use:
                    x0_targets[(position, step)] = x0
                latents[position] = latent
                done += 1
                if progress:
                    progress("editing", done, num_frames * num_inference_steps)
                if on_step_end is not None and position == num_frames - 1:
                    # no host copy here (the cache copies what it saves): no GPU sync per step
                    on_step_end(EditCheckpoint(step, torch.cat(latents), dict(x0_targets)))
        return torch.cat(latents)[np.argsort(order)], store

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
    ) -> Pix2VideoOutput:
        """Edit `frames` so they show `prompt`, consistently across the clip.

        Args:
            frames: RGB frames (H x W x 3 uint8 arrays or PIL images), all the same size,
                sides multiples of 64.
            prompt: the edit prompt (describes the result).
            source_prompt: describes the input; used for inversion.
            depth_maps: optional raw depth per frame, (N, H', W'); -1 marks background.
                Estimated with the checkpoint's depth estimator when omitted.
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
            inverted_latents: reuse x_T from an earlier inversion (same frames, prompt, depth, steps).
            depth: reuse normalised depth (N, 1, h, w) from `prepare_depth` (e.g. cached).
            schedule: `auto`, `frame` or `step`: processing order (same result; `step`
                needs far less memory and is chosen by `auto` whenever possible).
            feature_store_dtype / feature_store_device: keep injected features in another
                precision or on another device (memory for exactness/speed).
            inversion_batch_size: frames per UNet call during inversion (see `invert`).
            progress: callback(stage, done, total).
            resume / on_step_end: continue from / receive step checkpoints (see `edit`).
            masks: a local edit: per frame, an (H, W) alpha in [0, 1] (or bool), 1 = edit.
                Outside its support the latents follow the frame's inversion; the decoded
                frame is composited over the source through it, so pixels where it is 0
                are the source's exactly. `masks.mask_alpha` grows and softens a mask.
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
        )
        edit_embedding = self.encode_prompt(prompt)  # prompts first: a bad one fails fast
        negative_embedding = self.encode_prompt(negative_prompt)
        source_embedding = self.encode_prompt(source_prompt) if inverted_latents is None else None
        timings: dict[str, float] = {}
        evaluations_before = self.unet_evaluations
        frames = [np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f) for f in frames]

        tic = time.perf_counter()
        if depth is None:
            depth = self.prepare_depth(frames, depth_maps)
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
        _processing_order(1, 1, schedule, target_of)  # a schedule that cannot work fails now
        n, h, w = len(frames), height // multiple, width // multiple
        if depth_maps is not None and (len(depth_maps) != n or np.ndim(depth_maps) not in (3, 4)):
            raise InputError(
                f"Expected {n} depth maps of shape (height, width), got an array of shape "
                f"{tuple(np.shape(depth_maps))}."
            )
        for name, tensor, shape in (
            ("inverted_latents", inverted_latents, (n, 4, h, w)),
            ("depth", depth, (n, 1, h, w)),
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


def load_pipeline(
    model: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype | None = None,
) -> Pix2VideoPipeline:
    """Load a depth-conditioned SD2 checkpoint (hub id, folder or `tiny`) offline-first."""
    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    hint = " (or `tiny` for the bundled random-weight model)"
    pipe = load_pretrained(
        Pix2VideoPipeline.from_pretrained, model, "diffusion model", fallback_hint=hint, **kwargs
    )
    if pipe.unet.config.in_channels != 5:
        raise ModelNotAvailableError(
            f"The model '{model}' is not depth-conditioned (its UNet reads "
            f"{pipe.unet.config.in_channels} channels, not 4 latent + 1 depth); use a "
            "stable-diffusion-2-depth checkpoint."
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def default_inversion_batch(device: str | torch.device) -> int:
    """Frames per inversion UNet call when the user does not choose: what measured fastest.

    On a GPU a batch fills the device (8 frames). On our 2-core CPUs a batch of frames is no
    faster than one frame at a time for the tiny model (benchmarks/README.md), so 1.
    """
    return 8 if torch.device(device).type == "cuda" else 1


def source_trajectory(levels: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, steps, 4, h, w) from an inversion's latents, ordered as editing visits noise levels.

    `levels` = [clean latent, after inversion step 0, ..., after the last step (x_T)], each
    (N, 4, h, w). Editing step s starts at the level inversion reached after its step
    steps-1-s and lands on the one before it: index s holds `levels[steps - 1 - s]` (the
    last step lands on the clean latent).
    """
    steps = len(levels) - 1
    return torch.stack([levels[steps - 1 - s] for s in range(steps)], dim=1)


def anchor_order(num_frames: int, anchor: str) -> list[int]:
    """Clip indices in processing order: the anchor frame first (`last`: the clip reversed)."""
    return list(range(num_frames))[:: -1 if anchor == "last" else 1]


def _processing_order(
    num_frames: int, num_steps: int, schedule: str, target_of: dict[int, int]
) -> list[tuple[int, int]]:
    """(position, step) pairs in execution order; step-major unless a guidance target lies ahead."""
    needs_future_step = needs_frame_major(target_of)
    if schedule == "auto":
        schedule = "frame" if needs_future_step else "step"
    if schedule == "step" and needs_future_step:
        raise InputError(
            "Step-by-step processing cannot pull towards a later step's prediction; use schedule='frame'."
        )
    if schedule == "step":
        return [(p, s) for s in range(num_steps) for p in range(num_frames)]
    if schedule == "frame":
        return [(p, s) for p in range(num_frames) for s in range(num_steps)]
    raise InputError(f"schedule must be 'auto', 'frame' or 'step'; got {schedule!r}.")
