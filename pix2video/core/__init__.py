"""The method itself, backbone-free: DDIM inversion (`inversion`), the flow-matching walk of
FLUX/SD3 models and its inversion (`flow_matching`), the guided latent update (`guidance`),
the feature store and the cross-frame attention processor (`attention`; in SD3's joint
attention: `joint_attention`; in FLUX's double- and single-stream attention:
`flux_attention`), and the (frame, step) edit loop over a model predictor
(`edit_loop`); the method's options, checked once (`options`); one clip split across
workers (`frame_chain`).

Layer: imports only the package root (`errors`, `checks`); pipelines, the job and the
front ends build on it. `options` and `guidance` import no torch (the settings use them).
"""
