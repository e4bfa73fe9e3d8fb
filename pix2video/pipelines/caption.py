"""The source prompt from an image captioner, as the paper suggests (BLIP).

DDIM inversion needs a prompt that describes the input; when the user gives none, the
anchor frame is captioned. The authors' released code takes the source prompt from its
config instead; the paper proposes BLIP, which is what this uses.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import InputError
from ..models import DEFAULT_CAPTIONER, load_pretrained

MAX_NEW_TOKENS = 30


@functools.lru_cache(maxsize=1)
def load_captioner(model: str = DEFAULT_CAPTIONER, device: str = "cpu"):
    """(processor, model) of a BLIP captioning checkpoint: hub id (offline-first) or folder.

    The last one loaded is kept, so a server captions each new clip without reloading it.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = load_pretrained(BlipProcessor.from_pretrained, model, what="captioning model")
    net = load_pretrained(
        BlipForConditionalGeneration.from_pretrained, model, what="captioning model"
    )
    return processor, net.to(device).eval()


def caption_frame(
    frame: np.ndarray,
    model: str = DEFAULT_CAPTIONER,
    device: str = "cpu",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> str:
    """Describe an RGB frame (H x W x 3 uint8) in a short sentence, by greedy decoding.

    May return an empty string (a random-weight test model can produce one); callers
    decide what to do then.
    """
    import torch

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InputError(
            f"A frame to caption must be an H x W x 3 uint8 RGB array, got shape {frame.shape} "
            f"and dtype {frame.dtype}."
        )
    processor, net = load_captioner(model, device)
    inputs = processor(images=frame, return_tensors="pt").to(device)
    with torch.inference_mode():
        ids = net.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return " ".join(processor.decode(ids[0], skip_special_tokens=True).split())
