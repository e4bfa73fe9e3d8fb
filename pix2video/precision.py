"""Which precision the model runs in: `--dtype auto` and the CPU feature probe behind it.

`auto` picks the fastest precision the device computes natively: float16 on a CUDA GPU,
bfloat16 on a CPU with native bfloat16 instructions (AVX512_BF16 or AMX, where its matrix
products and convolutions run about twice as fast as in float32), float32 on any other CPU
(there bfloat16 is emulated and slower). Only the model's weights and activations take the
chosen precision: scheduler arithmetic, inverted latents, trajectories and the guided update
stay float32. The probe takes the CPU's flags as input, so every case is testable anywhere.
Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .settings import AUTO_DTYPE, DTYPES

BFLOAT16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 processors that compute bfloat16 natively (AVX512_BF16, AMX)."""
CPUINFO = Path("/proc/cpuinfo")
ISAS_WITHOUT_BFLOAT16: tuple[str, ...] = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
)  # fmt: skip
"""oneDNN's ISA limits (ONEDNN_MAX_CPU_ISA) that keep it off the bfloat16 instructions."""


@dataclass(frozen=True)
class DtypeChoice:
    """The precision an edit runs in, and why (the summary line and `doctor` print both)."""

    name: str  # "float32", "float16" or "bfloat16"
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: from `cpuinfo` (the text of /proc/cpuinfo) or this machine.

    Where /proc/cpuinfo cannot be read (macOS, Windows), torch's own probe answers for the
    bfloat16 flags alone.
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            return _torch_flags()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return _torch_flags()


def _torch_flags() -> frozenset[str]:
    try:
        import torch

        cpu = torch.cpu
        flags = set()
        if cpu._is_avx512_bf16_supported():
            flags.add("avx512_bf16")
        if cpu._is_amx_tile_supported():
            flags.add("amx_bf16")
        return frozenset(flags)
    except Exception:  # noqa: BLE001 - an older torch without the probes: no native bfloat16
        return frozenset()


def onednn_isa_limit(environ: Mapping[str, str] = os.environ) -> str | None:
    """The ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) that keeps oneDNN's convolutions and
    matrix products off bfloat16 instructions, or None: with such a limit bfloat16 is
    emulated there, as on a CPU without them."""
    isa = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return isa if isa in ISAS_WITHOUT_BFLOAT16 else None


def native_bfloat16(flags: Iterable[str]) -> str | None:
    """The flag that says this CPU computes bfloat16 natively, or None."""
    present = set(flags)
    return next((flag for flag in BFLOAT16_FLAGS if flag in present), None)


def choose_dtype(
    requested: str, device_type: str, flags: Iterable[str] = (), isa_limit: str | None = None
) -> DtypeChoice:
    """The precision for `requested` (a name in DTYPES) on a device of `device_type`.

    `flags` are the CPU's (`cpu_flags()`) and `isa_limit` oneDNN's (`onednn_isa_limit()`);
    they matter only for `auto` on the CPU. float16
    on the CPU is refused: no x86 CPU we run on computes it natively, so it is slow and
    its range overflows in the VAE.
    """
    if requested not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}.")
    if requested != AUTO_DTYPE:
        if requested == "float16" and device_type == "cpu":
            raise InputError(
                "--dtype float16 needs a GPU; on the CPU use auto, bfloat16 or float32."
            )
        return DtypeChoice(requested, "asked for")
    if device_type == "cuda":
        return DtypeChoice("float16", "auto: a CUDA GPU computes float16 natively")
    if device_type == "cpu":
        flag = native_bfloat16(flags)
        if flag is not None and isa_limit is not None:
            return DtypeChoice(
                "float32",
                f"auto: ONEDNN_MAX_CPU_ISA={isa_limit} keeps oneDNN off this CPU's bfloat16 "
                f"instructions ({flag})",
            )
        if flag is not None:
            return DtypeChoice("bfloat16", f"auto: this CPU computes bfloat16 natively, {flag}")
        return DtypeChoice(
            "float32", "auto: this CPU has no native bfloat16, no AVX512_BF16 or AMX"
        )
    return DtypeChoice("float32", f"auto: float32 on a {device_type} device")
