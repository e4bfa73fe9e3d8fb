"""`--offload model|sequential`: the transformer backbones on one 24 GB GPU.

FLUX.1 [dev] in bfloat16 is 24 GB of transformer alone (SD3.5 Large 16 GB), so it cannot sit
on such a GPU beside its ControlNet, VAE and the stored features. diffusers' CPU offload
(through accelerate's hooks) keeps the weights in CPU memory and moves them to the GPU when
they run: `model` moves one whole model at a time (`model_cpu_offload_seq`: the ControlNet
and the transformer then stay on the GPU together while the loop alternates them, the text
encoders leave as they finish), `sequential` one layer at a time (least GPU memory, slow).
The edit itself does not change: every tensor the loop makes goes to the execution device,
which `Offloadable.device` reports (diffusers' `device` would say "cpu", where the weights
rest). On the CPU there is nothing to offload, and the UNet backbones (SD 1/2, SDXL) fit
such a GPU whole, so both are refused in one sentence.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..settings import OFFLOAD_MODES


def check_offload(mode: str | None, device: torch.device | str, transformer: bool) -> None:
    """One sentence when `--offload mode` cannot apply: not a transformer backbone, the CPU."""
    if mode is None:
        return
    if mode not in OFFLOAD_MODES:
        raise InputError(f"--offload takes model or sequential, not {mode!r}.")
    if not transformer:
        raise InputError(
            "--offload is for the transformer backbones (FLUX, SD3/SD3.5), whose weights do not "
            "fit one 24 GB GPU; an SD 1/2 or SDXL model fits whole, so drop --offload."
        )
    if torch.device(device).type == "cpu":
        raise InputError(
            "--offload moves the weights between CPU memory and a GPU, and this edit runs on "
            "the CPU, where they already are: drop --offload, or run on a GPU (--device cuda)."
        )


class Offloadable:
    """A pipeline mixin: `enable_offload` and the execution device as `device`."""

    def enable_offload(self, mode: str, device: torch.device | str) -> None:
        """diffusers' model or sequential CPU offload onto `device` (a GPU); the pipeline's
        weights must be on the CPU (loaded there)."""
        check_offload(mode, device, transformer=True)
        device = torch.device(device)
        if mode == "model":
            self.enable_model_cpu_offload(device=device)
        else:
            self.enable_sequential_cpu_offload(device=device)
        self.__dict__["_offload_execution"] = device

    @property
    def offload_device(self) -> torch.device | None:
        """The GPU the offloaded weights run on; None without offload."""
        return self.__dict__.get("_offload_execution")

    @property
    def device(self) -> torch.device:
        """Where the edit's tensors go: the GPU under offload, else the weights' device."""
        execution = self.offload_device
        return execution if execution is not None else super().device
