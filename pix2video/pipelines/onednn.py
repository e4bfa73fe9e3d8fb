"""Linear layers through oneDNN on the CPU: the fast GEMM path in float32 and bfloat16.

torch runs `nn.Linear` on the CPU through MKL's sgemm, which takes a slow generic path on
AMD processors (measured 184-210 GFLOP/s in float32 on a 2-core EPYC where oneDNN's kernels
and OpenBLAS reach ~450); its bfloat16 linear is slower than oneDNN's as well. Convolutions
already run through oneDNN. `use_onednn_linears` re-types every `nn.Linear` of a model as
`OneDNNLinear`, which calls oneDNN's linear kernel (the one inductor uses) in eager mode: no
compilation, nothing to pay back, the attention processors stay swappable, and float32
results differ from MKL's only by rounding (the summation order). Anywhere else (a GPU,
gradients, a dtype oneDNN lacks) the layer is an ordinary `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
_REFUSED: set[torch.dtype] = set()
"""Dtypes oneDNN could not build a linear kernel for in this process: bfloat16 where the CPU,
or an ``ONEDNN_MAX_CPU_ISA`` limit, leaves it without bfloat16 instructions. Those layers
take `F.linear` (torch's own, emulating where it must) from the first refusal on."""


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear kernel (x86 and ARM builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose CPU inference runs through oneDNN (same weights, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            x.device.type != "cpu"
            or x.dtype != w.dtype
            or w.dtype not in ONEDNN_DTYPES
            or w.dtype in _REFUSED
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        ):
            return F.linear(x, w, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        try:
            out = torch.ops.mkldnn._linear_pointwise(flat, w, self.bias, "none", [], "")
        except RuntimeError:  # "could not create a primitive descriptor": no kernel here
            _REFUSED.add(w.dtype)
            return F.linear(x, w, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


def use_onednn_linears(pipe) -> int:
    """Run the linear layers of every model of `pipe` through oneDNN (in place); returns how many.

    `pipe` is a pipeline (its `components`) or one module. Only exact `nn.Linear`s change
    (LoRAs are fused before this; subclasses keep their own forward). A no-op where this
    torch build has no oneDNN.
    """
    if not onednn_available():
        return 0
    components = getattr(pipe, "components", {"model": pipe})
    count = 0
    for component in components.values():
        if not isinstance(component, nn.Module):
            continue
        for module in component.modules():
            if type(module) is nn.Linear:
                module.__class__ = OneDNNLinear
                count += 1
    return count
