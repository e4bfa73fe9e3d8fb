"""`EvalReport`: one edited video's metrics, as JSON, a Markdown table or a plot.

Means skip non-finite values (a masked PixelMSE with no consistent pixel), which JSON
writes as null and the table as "n/a".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import write_output
from .flow import FLOW_METHOD


def finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class EvalReport:
    """The metrics of one edited video; means plus the per-frame / per-pair values."""

    clip_text: float
    clip_image: float
    pixel_mse: float
    pixel_mse_masked: float
    clip_text_per_frame: list[float] = field(default_factory=list)
    clip_image_per_pair: list[float] = field(default_factory=list)
    pixel_mse_per_pair: list[float] = field(default_factory=list)
    pixel_mse_masked_per_pair: list[float] = field(default_factory=list)
    valid_fraction_per_pair: list[float] = field(default_factory=list)
    num_frames: int = 0
    prompt: str = ""
    clip_model: str = ""
    regions: dict[str, float] | None = None  # inside/outside a mask (`region_scores`), if given

    def to_dict(self) -> dict:
        """JSON-ready dict: the dataclass fields plus `valid_fraction` (mean) and `flow_method`.

        Non-finite values (a masked PixelMSE with no valid pixel) become `None`.
        """
        data = {k: _json_safe(v) for k, v in asdict(self).items()}
        if self.regions is not None:
            data["regions"] = {k: _json_safe(v) for k, v in self.regions.items()}
        data["valid_fraction"] = _json_safe(finite_mean(self.valid_fraction_per_pair))
        data["flow_method"] = FLOW_METHOD
        return data

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        """Inverse of `to_dict` (extra keys ignored, `None` read back as NaN)."""

        def back(v: Any) -> Any:
            if v is None:
                return float("nan")
            if isinstance(v, list):
                return [back(x) for x in v]
            return v

        values = {
            f.name: back(data[f.name])
            for f in fields(cls)
            if f.name in data and f.name != "regions"
        }
        if data.get("regions") is not None:
            values["regions"] = {k: back(v) for k, v in data["regions"].items()}
        return cls(**values)

    def to_markdown(self) -> str:
        rows = [
            ("CLIP-Text ↑", self.clip_text_per_frame, self.clip_text, "frame vs prompt"),
            ("CLIP-Image ↑", self.clip_image_per_pair, self.clip_image, "frame t vs t+1"),
            ("PixelMSE ↓", self.pixel_mse_per_pair, self.pixel_mse, "flow-warped t vs t+1"),
            (
                "PixelMSE masked ↓",
                self.pixel_mse_masked_per_pair,
                self.pixel_mse_masked,
                "consistent pixels only",
            ),
            (
                "valid fraction",
                self.valid_fraction_per_pair,
                finite_mean(self.valid_fraction_per_pair),
                "pixels kept by the mask",
            ),
        ]
        prompt = self.prompt.replace("|", "\\|").replace("\n", " ")
        lines = [
            f"**Prompt:** {prompt}  ",
            f"**Frames:** {self.num_frames} · **CLIP:** `{self.clip_model}` · "
            f"**Flow:** {FLOW_METHOD}",
            "",
            "| Metric | Mean | Min | Max | Compares |",
            "|---|---:|---:|---:|---|",
        ]
        for name, values, mean, what in rows:
            finite = [v for v in values if math.isfinite(v)]
            lo = _fmt(min(finite)) if finite else "n/a"
            hi = _fmt(max(finite)) if finite else "n/a"
            lines.append(f"| {name} | {_fmt(mean)} | {lo} | {hi} | {what} |")
        if self.regions is not None:
            r = self.regions
            lines += [
                "",
                f"Inside / outside the mask ({_fmt(100 * r['mask_fraction'])}% of the pixels inside):",
                "",
                "| Metric | Inside | Outside | Compares |",
                "|---|---:|---:|---|",
            ]
            for key, label, what in (
                ("clip_text", "CLIP-Text ↑", "region (other part grey) vs prompt"),
                ("pixel_mse", "PixelMSE ↓", "flow-warped t vs t+1, region pixels"),
                ("source_mse", "Source MSE", "edited vs source frame (0 = untouched)"),
            ):
                inside, outside = _fmt(r[f"{key}_inside"]), _fmt(r[f"{key}_outside"])
                lines.append(f"| {label} | {inside} | {outside} | {what} |")
        return "\n".join(lines) + "\n"

    def save_json(self, path: str | Path) -> Path:
        return write_output(
            path, lambda tmp: tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        )

    def save_markdown(self, path: str | Path) -> Path:
        return write_output(path, lambda tmp: tmp.write_text(self.to_markdown()))

    def plot(self, path: str | Path) -> Path:
        """PNG with the per-frame CLIP-Text, per-pair CLIP-Image and per-pair PixelMSE curves."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 7.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
        frames = list(range(len(self.clip_text_per_frame)))
        pairs = [t + 0.5 for t in range(len(self.clip_image_per_pair))]
        ax1.plot(frames, self.clip_text_per_frame, "o-", color="tab:blue")
        ax1.axhline(self.clip_text, color="tab:blue", ls="--", lw=0.8)
        ax1.set_ylabel("CLIP-Text")
        ax1.set_title(f"{self.prompt[:80]}  ({self.clip_model})", fontsize=9)
        ax2.plot(pairs, self.clip_image_per_pair, "o-", color="tab:green")
        ax2.axhline(self.clip_image, color="tab:green", ls="--", lw=0.8)
        ax2.set_ylabel("CLIP-Image (t, t+1)")
        pairs_mse = [t + 0.5 for t in range(len(self.pixel_mse_per_pair))]
        ax3.plot(pairs_mse, self.pixel_mse_per_pair, "o-", color="tab:red", label="PixelMSE")
        ax3.plot(
            pairs_mse,
            self.pixel_mse_masked_per_pair,
            "s--",
            color="tab:orange",
            label="PixelMSE (consistent pixels)",
        )
        ax3.set_ylabel("PixelMSE (t→t+1)")
        ax3.set_xlabel("frame")
        ax3.legend(fontsize=8)
        return write_output(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
