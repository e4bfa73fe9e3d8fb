"""One diffusers pipeline per backbone, on the shared loop of `core`.

`backbone` is what every backbone shares (`Pix2VideoBase`); `sd2_depth` is SD2-depth
(the depth channel), `sd15_controlnet` SD 1.5 + ControlNets, `sdxl` SDXL + ControlNets,
`sd3` SD3/SD3.5 + SD3 ControlNets (flow matching), `flux` FLUX.1 Depth/Canny [dev] (flow
matching, embedded guidance), `flux_controlnet` FLUX.1 [dev] + FLUX ControlNets; the
transformer backbones share `text_encoders` (each prompt encoded once, the encoders freed)
and `offload` (diffusers' CPU offload). `checkpoints` tells which one a
checkpoint needs and loads it (`load_pipeline`; the transformer families through
`transformer_checkpoints`), with LoRAs and single files. Beside them,
the models and images that condition them: `depth` (depth maps), `control` (control images
and the depth estimator), `masks` (local edits: mask maths and text-to-mask), `caption`
(the source prompt from BLIP).

Layer: imports `core`, `media` and the package root; never the job or a front end.
"""
