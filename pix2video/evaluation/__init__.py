"""Measuring edits: CLIP-Text, CLIP-Image and flow-warped PixelMSE (`metrics`), and the
ablation study of the method's components (`ablation`).

Layer: imports `pipelines`, `media` and the package root; the front ends and the batch
runner call it.
"""
