"""The settings of one edit, defined and validated once for every front end.

`EditSettings` holds every option of `pix2video edit` with its default; the command line,
config files, the web UI and Python callers all build one and call `validate()`, which
checks values (choices, ranges, finiteness, the guidance schedule) before any model is
loaded. The choice lists (attend modes, anchors, schedules, precisions) live here and
nowhere else. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import platformdirs

from .checks import check_choice, check_integer, check_number
from .core.options import MAX_GUIDANCE_SCALE, EditOptions  # the method's options live there
from .errors import InputError, OptionError
from .models import DEFAULT_CAPTIONER, DEFAULT_MASK_MODEL, DEFAULT_MODEL

METHOD = EditOptions()
"""The method's defaults (`core.options`), which the settings' defaults are."""
CONTROL_KINDS: tuple[str, ...] = ("canny", "depth")
"""Control images computed per frame for a ControlNet; anything else given is a path. Each
has its class in `job.conditioning.CONTROL_KIND_CLASSES` (tests/test_layout.py checks both
name the same kinds); the command line and the error texts list these."""
OFFLOAD_MODES: tuple[str, ...] = ("model", "sequential")
"""diffusers' CPU offload of a transformer backbone's weights (`pipelines.offload`)."""
AUTO_DTYPE = "auto"
DTYPES: tuple[str, ...] = (AUTO_DTYPE, "float32", "float16", "bfloat16")
"""Model precisions; auto: float16 on CUDA, bfloat16 on a CPU that has it natively, else
float32 (`precision.choose_dtype`)."""
FEATURE_STORE_DTYPES: tuple[str, ...] = ("float32", "float16")
"""--feature-store-dtype: float32 keeps the features as the model computes them."""
DEFAULT_CACHE_DIR = str(platformdirs.user_cache_path("pix2video"))
AUTO_SIZE = "auto"
"""--size default: the long side the model family was trained at (`LONG_SIDES`)."""
LONG_SIDES: dict[str, int] = {"sd": 512, "sdxl": 1024}
"""Default processing long side per model family: SD2-depth and SD 1.5 at 512, SDXL at 1024."""
MAX_MASK_GROWTH = 512  # pixels of --mask-dilate / --mask-feather
MAX_CANNY_THRESHOLD = 1000  # OpenCV's Canny works on gradient magnitudes, which can pass 255
BACKBONE_FIELDS: tuple[str, ...] = (
    "model_config",
    "controlnet",
    "control",
    "control_scale",
    "canny_low",
    "canny_high",
    "depth_model",
    "lora",
)
"""Options that say which model runs and what conditions it (a server fixes them for all jobs)."""
SEQUENCE_FIELDS: tuple[str, ...] = ("controlnet", "control", "control_scale", "lora", "devices")
"""Options given once per item (repeatable on the command line; lists in config files)."""
WORKER_BACKENDS: tuple[str, ...] = ("local", "ray")
"""Where the workers of one clip run: processes on this machine, or Ray actors."""
WORKER_FIELDS: tuple[str, ...] = ("workers", "devices", "backend", "ray_address", "cpus_per_worker")
"""Options that split one clip across workers (`job.chain_driver`); they never change the result."""
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass
class EditSettings:
    """Everything one edit takes; the defaults are `pix2video edit`'s defaults.

    Paths may be strings or `os.PathLike`; `size` is a long side (512), "WxH" or "auto".
    """

    input: str | os.PathLike
    prompt: str
    output: str | os.PathLike
    source_prompt: str | None = None  # None: caption the anchor frame
    negative_prompt: str = ""
    model: str = DEFAULT_MODEL  # SD2-depth, SD 1.5 or SDXL checkpoint: hub id, folder, file
    model_config: str | None = None  # diffusers configs for a single-file checkpoint
    controlnet: tuple[str, ...] = ()  # ControlNets (hub id or folder) for an SD 1.5/SDXL model
    control: tuple[str, ...] = ()  # per ControlNet: canny, depth, or a folder/video of frames
    control_scale: tuple[float, ...] = ()  # per ControlNet; default 1.0 each
    canny_low: int = 100
    canny_high: int = 200
    depth_model: str | None = None  # depth estimator (transformers); None: the model's own
    lora: tuple[str, ...] = ()  # PATH_OR_ID[:SCALE] each
    device: str = "auto"
    dtype: str = AUTO_DTYPE  # DTYPES; auto resolves per device (precision.choose_dtype)
    size: str | int = AUTO_SIZE  # long side, "WxH", or "auto" (the model family's, LONG_SIDES)
    keep_source_size: bool = False
    start: str | int | float | None = None
    end: str | int | float | None = None
    stride: int = 1
    max_frames: int | None = None
    depth_dir: str | os.PathLike | None = None
    mask: str | os.PathLike | None = None  # local edit: mask images, video or one image
    mask_prompt: str | None = None  # local edit: segment this text in every frame
    mask_model: str = DEFAULT_MASK_MODEL
    mask_threshold: float = 0.4
    mask_dilate: int = 8  # pixels the mask grows by
    mask_feather: int = 8  # pixels over which the edit fades into the source
    save_masks: str | os.PathLike | None = None
    steps: int = METHOD.num_inference_steps
    guidance_scale: float = METHOD.guidance_scale
    seed: int = METHOD.seed
    attend: str = METHOD.attend
    anchor: str = METHOD.anchor
    latent_guidance_weight: float = METHOD.latent_guidance_weight
    latent_guidance_steps: int | None = METHOD.latent_guidance_steps
    latent_guidance_target: str = METHOD.latent_guidance_target
    feature_store_dtype: str = "float32"
    offload_features: bool = False
    offload: str | None = None  # "model" | "sequential": diffusers' CPU offload (transformers)
    vae_tiling: bool = False
    inversion_batch: int | None = None  # frames per inversion UNet call; None: the device's best
    frame_batch: int | str = "auto"  # frames per editing UNet call; "auto": the device's best
    inject_blocks: str | None = None  # SD3: the injected joint blocks ("12,13,..."); None: default
    compile: bool = False  # torch.compile the UNet (pays off on a GPU for long clips)
    workers: int = 1  # processes (or Ray actors) that share the clip's frame chain
    devices: tuple[str, ...] = ()  # one local worker per device, e.g. ("cuda:0", "cuda:1")
    backend: str = "local"  # WORKER_BACKENDS
    ray_address: str | None = None  # a Ray cluster to join (backend "ray"); None: start one
    cpus_per_worker: float | None = None  # CPUs a worker reserves (and torch threads it uses)
    checkpoint_interval: float = 60.0  # seconds between editing checkpoints (at a step's end)
    save_latents: str | os.PathLike | None = None
    side_by_side: bool = False
    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR
    no_cache: bool = False
    captioner: str = DEFAULT_CAPTIONER
    stats_json: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        for name in SEQUENCE_FIELDS:  # a config file gives lists (or one value)
            value = getattr(self, name)
            if value is None:
                value = ()
            elif isinstance(value, (str, int, float)):
                value = (value,)
            if name == "devices":  # "cuda:0,cuda:1" as well as a list
                value = [d.strip() for item in value for d in str(item).split(",") if d.strip()]
            setattr(self, name, tuple(value))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each optional setting's default (what the command line and the UI show)."""
        return {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING
        }

    @classmethod
    def from_mapping(cls, values: dict[str, Any], where: str = "the settings") -> EditSettings:
        """Build from option names (`guidance-scale` or `guidance_scale`); unknown keys are errors."""
        known = set(cls.field_names())
        kwargs = {}
        for key, value in values.items():
            name = str(key).strip().lstrip("-").replace("-", "_")
            if name not in known:
                raise InputError(f"{where} has an unknown option '{key}'.")
            kwargs[name] = value
        missing = [n for n in ("input", "prompt", "output") if n not in kwargs]
        if missing:
            raise InputError(f"{where} lacks the required option '{missing[0]}'.")
        return cls(**kwargs)

    @property
    def masked(self) -> bool:
        """A local edit: only the masked region changes."""
        return self.mask is not None or self.mask_prompt is not None

    def replace(self, **changes: Any) -> EditSettings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> EditSettings:
        """Check every value (not the file system); raise `InputError` with one sentence.

        Returns self, so `EditSettings(...).validate()` reads naturally.
        """
        from .media import parse_position, parse_size

        for name in ("input", "output"):
            if not str(getattr(self, name) or "").strip():
                raise InputError(f"The {name} path is empty.")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("The edit prompt is empty: describe the result you want.")
        if self.source_prompt is not None and not isinstance(self.source_prompt, str):
            raise InputError("The source prompt must be text (or omitted to caption the clip).")
        if not isinstance(self.negative_prompt, str):
            raise InputError("The negative prompt must be text.")
        _choice("dtype", self.dtype, DTYPES)
        _choice("feature-store-dtype", self.feature_store_dtype, FEATURE_STORE_DTYPES)
        options = self.edit_options()  # checks the method's options
        _integer("stride", self.stride, 1)
        if self.max_frames is not None:
            _integer("max-frames", self.max_frames, 1)
        if self.inversion_batch is not None:
            _integer("inversion-batch", self.inversion_batch, 1)
        _number("checkpoint-interval", self.checkpoint_interval, 0.0)
        if self.mask is not None and self.mask_prompt is not None:
            raise InputError("Give --mask or --mask-prompt, not both.")
        if self.mask is not None and not str(self.mask).strip():
            raise InputError("The --mask path is empty.")
        if self.mask_prompt is not None and (
            not isinstance(self.mask_prompt, str) or not self.mask_prompt.strip()
        ):
            raise InputError("The --mask-prompt is empty: name what to edit (e.g. 'the swan').")
        if self.save_masks is not None and self.mask is None and self.mask_prompt is None:
            raise InputError("--save-masks needs a mask: add --mask or --mask-prompt.")
        _number("mask-threshold", self.mask_threshold, 0.0, 1.0)
        _integer("mask-dilate", self.mask_dilate, 0, MAX_MASK_GROWTH)
        _integer("mask-feather", self.mask_feather, 0, MAX_MASK_GROWTH)
        if not str(self.mask_model).strip():
            raise InputError("The --mask-model name is empty: use a hub id or a folder.")
        if self.size != AUTO_SIZE:
            parse_size(self.size)
        parse_position(self.start)
        parse_position(self.end)
        if not str(self.model).strip():
            raise InputError("The model name is empty: use a hub id, a folder or 'tiny'.")
        self._validate_backbone()
        self._validate_workers(options)
        return self

    def edit_options(self) -> EditOptions:
        """The method's options of this edit (`core.options`), checked; a bad value is named
        by its option (`--steps`). The frame batch may still be "auto"."""
        try:
            return EditOptions(
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                attend=self.attend,
                anchor=self.anchor,
                latent_guidance_weight=self.latent_guidance_weight,
                latent_guidance_steps=self.latent_guidance_steps,
                latent_guidance_target=self.latent_guidance_target,
                seed=self.seed,
                frame_batch=self.frame_batch,
                feature_store_dtype=None  # float32: as the model computes them
                if self.feature_store_dtype == "float32"
                else self.feature_store_dtype,
                feature_store_device="cpu" if self.offload_features else None,
                inject_blocks=self.inject_blocks,
            )
        except OptionError as exc:
            name = {"num_inference_steps": "steps"}.get(exc.option, exc.option)
            raise exc.named("--" + name.replace("_", "-")) from None

    @property
    def worker_count(self) -> int:
        """How many workers share the clip's frame chain (1: this process edits it alone)."""
        return len(self.devices) if self.devices else self.workers

    @property
    def split_across_workers(self) -> bool:
        return self.worker_count > 1 or self.backend == "ray"

    def _validate_workers(self, options: EditOptions) -> None:
        """--workers, --devices, --backend, --ray-address, --cpus-per-worker."""
        from .core.guidance import UNSPLITTABLE

        _choice("backend", self.backend, WORKER_BACKENDS)
        _integer("workers", self.workers, 1)
        for device in self.devices:
            if not DEVICE_PATTERN.match(device):
                raise InputError(f"--devices takes cpu or cuda:N, comma-separated; got {device!r}.")
        if self.devices and self.workers not in (1, len(self.devices)):
            raise InputError(
                f"--workers {self.workers} and {len(self.devices)} --devices disagree: give "
                "one of them (one worker per device)."
            )
        if len({d.split(":")[0] for d in self.devices}) > 1:
            raise InputError("--devices must all be CPUs or all GPUs.")
        if self.backend == "ray" and self.devices:
            raise InputError("Ray places its workers itself: give --workers N, not --devices.")
        if self.backend != "ray":
            for name in ("ray_address", "cpus_per_worker"):
                if getattr(self, name) is not None:
                    option = name.replace("_", "-")
                    raise InputError(f"--{option} needs --backend ray.")
        if self.ray_address is not None and not str(self.ray_address).strip():
            raise InputError("The --ray-address is empty: use HOST:PORT or auto.")
        if self.cpus_per_worker is not None:
            _number("cpus-per-worker", self.cpus_per_worker, 0.01)
        if self.split_across_workers and not options.splittable:
            raise InputError(UNSPLITTABLE)

    def _validate_backbone(self) -> None:
        """ControlNets with their controls and scales, LoRAs, depth model, canny thresholds."""
        if self.offload is not None:
            _choice("offload", self.offload, OFFLOAD_MODES)
        for name, value in (("model-config", self.model_config), ("depth-model", self.depth_model)):
            if value is not None and not str(value).strip():
                raise InputError(f"The --{name} name is empty: use a hub id or a folder.")
        if any(not str(c).strip() for c in self.controlnet):
            raise InputError("A --controlnet name is empty: use a hub id or a folder.")
        n = len(self.controlnet)
        if n and self.model_reads_control:  # told here, so the page refuses it before it starts
            raise InputError(
                f"The model '{self.model}' (FLUX.1 Depth/Canny [dev]) reads its control image "
                "itself and takes no --controlnet: leave it out and give one --control depth|canny."
            )
        if self.control and not n and not (len(self.control) == 1 and self.model_reads_control):
            raise InputError(
                "--control needs a --controlnet to read it (only a FLUX.1 Depth/Canny [dev] "
                "model reads one itself); add --controlnet ID."
            )
        if not n and not self.control and self.model_reads_control:
            raise InputError(
                f"The model '{self.model}' (FLUX.1 Depth/Canny [dev]) reads a control image for "
                "the video's structure: add --control depth (Depth [dev]) or --control canny."
            )
        if n and len(self.control) != n:
            raise InputError(
                f"Give one --control ({_control_choices()}) per "
                f"--controlnet, in the same order: {n} ControlNet(s), {len(self.control)} --control."
            )
        if any(not str(c).strip() for c in self.control):
            raise InputError(f"A --control is empty: use {_control_choices()}.")
        if self.control_scale and len(self.control_scale) != n:
            raise InputError(
                f"Give one --control-scale per --controlnet ({n}), or none for 1.0 each; got "
                f"{len(self.control_scale)}."
            )
        for scale in self.control_scale:
            _number("control-scale", scale, 0.0, MAX_GUIDANCE_SCALE)
        _integer("canny-low", self.canny_low, 0, MAX_CANNY_THRESHOLD)
        _integer("canny-high", self.canny_high, 0, MAX_CANNY_THRESHOLD)
        if self.canny_low > self.canny_high:
            raise InputError(
                f"--canny-low ({self.canny_low}) must not exceed --canny-high ({self.canny_high})."
            )
        for text in self.lora:
            parse_lora(text)

    @property
    def model_reads_control(self) -> bool:
        """The model is its own control model (FLUX.1 Depth/Canny [dev]): one `--control`
        names the image it reads, without `--controlnet`."""
        from .models import reads_control_itself

        return reads_control_itself(self.model)

    @property
    def control_scales(self) -> tuple[float, ...]:
        """One conditioning scale per ControlNet (1.0 unless given)."""
        return tuple(float(s) for s in self.control_scale) or (1.0,) * len(self.controlnet)

    @property
    def loras(self) -> tuple[tuple[str, float], ...]:
        """(path or hub id, scale) of every --lora."""
        return tuple(parse_lora(text) for text in self.lora)


def processing_size(size: str | int, sdxl: bool = False) -> int | tuple[int, int]:
    """A --size as `media.parse_size` reads it; "auto" is the model family's long side."""
    from .media import parse_size

    if size == AUTO_SIZE:
        return LONG_SIDES["sdxl" if sdxl else "sd"]
    return parse_size(size)


def parse_lora(text: str) -> tuple[str, float]:
    """`PATH_OR_ID[:SCALE]` -> (path or id, scale); the scale defaults to 1.0.

    Only a last `:` followed by a number is a scale, so `C:/loras/x.safetensors` stays a path.
    """
    text = str(text).strip()
    name, sep, tail = text.rpartition(":")
    scale = 1.0
    try:
        scale = float(tail) if sep else scale
    except ValueError:
        name = text
    if not sep:
        name = text
    if not name.strip():
        raise InputError(f"The --lora {text!r} names no LoRA: use PATH_OR_ID[:SCALE].")
    if not math.isfinite(scale):
        raise InputError(f"The --lora scale in {text!r} must be a finite number.")
    return name.strip(), scale


def _control_choices() -> str:
    """ "canny, depth or a folder/video of control frames": what --control takes."""
    *rest, last = CONTROL_KINDS
    return f"{', '.join(rest)}, {last} or a folder/video of control frames"


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    check_choice(f"--{name}", value, choices)


def _integer(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    check_integer(f"--{name}", value, lo, hi)


def _number(name: str, value: Any, lo: float, hi: float | None = None) -> None:
    check_number(f"--{name}", value, lo, hi)
