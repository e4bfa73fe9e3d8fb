"""pix2video: text-guided video editing with a depth-conditioned image diffusion model.

The Pix2Video method (Ceylan, Huang, Mitra, ICCV 2023) on current diffusers. Where things live:

- `pipeline.Pix2VideoPipeline`: the algorithm, top to bottom (depth, inversion, editing).
- `attention`: the feature store (anchor / previous frame) and the injection processor.
- `guidance`: the guided latent update towards the previous frame's predicted clean latent.
- `inversion`: DDIM steps and DDIM inversion as small pure functions.
- `depth`: depth estimation, loading and normalisation.
"""

from .errors import InputError, ModelNotAvailableError, Pix2VideoError, VideoError

__all__ = ["InputError", "ModelNotAvailableError", "Pix2VideoError", "VideoError"]
__version__ = "0.1.0"
