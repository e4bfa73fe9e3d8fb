"""The method itself, backbone-free: DDIM inversion (`inversion`), the guided latent update
(`guidance`), the feature store and the cross-frame attention processor (`attention`), and
the (frame, step) edit loop over a noise predictor (`editing`).

Layer: imports only the package root (`errors`, `settings`); pipelines, the job and the
front ends build on it.
"""
