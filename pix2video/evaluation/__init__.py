"""Measuring edits: CLIP-Text, CLIP-Image and flow-warped PixelMSE (`metrics`, on `flow`,
`clip_score` and `frames`; `report` writes them), and the ablation study of the method's
components (`ablation`).

Layer: imports `pipelines`, `media` and the package root; the front ends and the batch
runner call it.
"""
