"""The model of a job: loaded once per server (`PipelineCache`), set up for the settings."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..settings import EditSettings

if TYPE_CHECKING:
    from ..pipelines.backbone import Pix2VideoBase


class PipelineCache:
    """Loaded pipelines by everything that shapes their weights, so a server loads a model once.

    The key is the model, device, dtype and compilation, and the ControlNets, LoRAs (with
    their scales: they are fused into the weights), depth model and single-file config.
    Keeps the most recent `size` pipelines; thread-safe.
    """

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self._pipes: dict[tuple, Pix2VideoBase] = {}
        self._lock = threading.Lock()

    def get(
        self,
        model: str,
        device,
        dtype,
        compile: bool = False,
        controlnets: tuple[str, ...] = (),
        loras: tuple[tuple[str, float], ...] = (),
        depth_model: str | None = None,
        model_config: str | None = None,
        offload: str | None = None,
    ) -> Pix2VideoBase:
        """The loaded pipeline; on a GPU its UNet is channels-last (faster convolutions).
        With `offload` its weights are loaded into CPU memory and run on `device` through
        diffusers' CPU offload (`pipelines.offload`)."""
        import torch

        from ..pipelines.checkpoints import load_pipeline

        extras = (tuple(controlnets), tuple(loras), depth_model, model_config)
        key = (model, str(device), str(dtype), compile, extras, offload)
        with self._lock:
            pipe = self._pipes.pop(key, None)
            if pipe is None:
                pipe = load_pipeline(model, "cpu" if offload else device, dtype, *extras)
                if offload:
                    pipe.enable_offload(offload, device)
                unet = getattr(pipe, "unet", None)  # None: SD3, a transformer
                if pipe.device.type == "cuda" and unet is not None:
                    unet.to(memory_format=torch.channels_last)
                if compile:  # in place: the attention processors stay swappable
                    (unet if unet is not None else pipe.transformer).compile()
            self._pipes[key] = pipe  # most recent last
            while len(self._pipes) > self.size:
                self._pipes.pop(next(iter(self._pipes)))
            return pipe


def load_pipe(
    s: EditSettings, pipelines: PipelineCache, device, dtype, library_logs: bool
) -> Pix2VideoBase:
    """The settings' pipeline from `pipelines`, with their ControlNet scales and VAE tiling."""
    from ..pipelines import sd2_depth  # noqa: F401 - imports diffusers, whose logs are silenced next
    from ..quiet import silence_libraries

    if not library_logs:
        silence_libraries()
    if s.offload:  # before loading: a refusal costs nothing
        from ..pipelines.checkpoints import is_flux_checkpoint, is_sd3_checkpoint
        from ..pipelines.offload import check_offload

        transformer = is_flux_checkpoint(s.model) or is_sd3_checkpoint(s.model)
        check_offload(s.offload, device, transformer)
    pipe = pipelines.get(
        s.model,
        device,
        dtype,
        s.compile,
        controlnets=s.controlnet,
        loras=s.loras,
        depth_model=s.depth_model if not s.controlnet else None,
        model_config=s.model_config,
        offload=s.offload,
    )
    if s.controlnet:
        pipe.set_controlnet_scales(s.control_scales)
    if s.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    return pipe


def check_pipeline_inputs(pipe: Pix2VideoBase, s: EditSettings, anchor_frame) -> None:
    """The pipeline's own checks of the settings, on the anchor frame (all have its size)."""
    pipe.check_inputs(
        [anchor_frame],
        s.prompt,
        s.source_prompt or "",
        s.edit_options(),
        negative_prompt=s.negative_prompt,
    )
