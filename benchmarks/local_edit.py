"""What a local edit costs: seconds per frame and peak RSS without a mask, with a mask file,
and with a text-prompted mask (CLIPSeg), side by side in one run.

    python benchmarks/local_edit.py --frames 16 --size 256 --steps 10

Each variant is `pix2video edit` on the example clip in its own process (tiny SD2-depth
model, no cache), so each peak RSS is its own (`os.wait4`). The text-prompted variant uses
a CLIPSeg of the real `CIDAS/clipseg-rd64-refined` architecture (ViT-B/16 at 352 px,
reduce_dim 64, the refined decoder) with random weights, built here: it times like the
real one, its masks are noise (so the mask is thresholded to cover about a third of the
frame).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from long_clip import run_edit  # noqa: E402 - the same measured `pix2video edit` run

CLIP = ROOT / "examples" / "cockatoo.mp4"
TINY_CLIP = ROOT.parent / "shared" / "models" / "tiny-clip"


def full_size_clipseg(folder: Path) -> Path:
    """A random-weight CLIPSeg with the architecture of CIDAS/clipseg-rd64-refined."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
    )
    from transformers.models.vit import ViTImageProcessorPil

    config = CLIPSegConfig(
        vision_config={"patch_size": 16, "image_size": 352},
        reduce_dim=64,
        extract_layers=[3, 6, 9],
        use_complex_transposed_convolution=True,
    )
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessorPil(size={"height": 352, "width": 352}),
        tokenizer=AutoTokenizer.from_pretrained(TINY_CLIP),
    )
    processor.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        square = Image.new("L", (1280, 720))
        square.paste(255, (400, 150, 900, 600))
        square.save(tmp / "square.png")
        clipseg = full_size_clipseg(tmp / "clipseg")
        common = [
            str(CLIP), "-p", "a golden cockatoo", "--source-prompt", "a white cockatoo",
            "--model", "tiny", "--size", str(args.size), "--max-frames", str(args.frames),
            "--steps", str(args.steps), "--no-cache",
        ]  # fmt: skip
        variants = {
            "whole frame": [],
            "--mask square.png": ["--mask", str(tmp / "square.png")],
            "--mask-prompt (CLIPSeg rd64 size)": [
                "--mask-prompt",
                "the bird",
                "--mask-model",
                str(clipseg),
                "--mask-threshold",
                "0.6",
            ],  # fmt: skip
        }
        rows = []
        for name, extra in variants.items():
            out = tmp / f"out{len(rows)}.mp4"
            wall, rss, _ = run_edit([*common, *extra, "-o", str(out)])
            rows.append((name, wall, rss))
    base_wall, base_rss = rows[0][1], rows[0][2]
    n = args.frames
    print(f"\n{n} frames at {args.size}, {args.steps} steps, tiny SD2-depth model\n")
    print("| variant | wall | s/frame | vs whole frame | peak RSS | vs whole frame |")
    print("|---|---|---|---|---|---|")
    for name, wall, rss in rows:
        print(
            f"| {name} | {wall:.1f} s | {wall / n:.2f} | {(wall - base_wall) / n:+.2f} s/frame "
            f"| {rss / 2**20:.0f} MiB | {(rss - base_rss) / 2**20:+.0f} MiB |"
        )


if __name__ == "__main__":
    main()
