"""Joining or starting Ray, for every part that runs on it (`batch --backend ray`, one clip's
workers in `job.workers`). Ray is imported only when one of them runs.
"""

from __future__ import annotations

import os

from .errors import Pix2VideoError

RAY_MISSING = "The ray backend needs Ray: pip install 'pix2video[ray]'."


def import_ray():
    """The `ray` module, or one sentence telling how to install it."""
    try:
        import ray
    except ImportError:
        raise Pix2VideoError(RAY_MISSING) from None
    return ray


def connect(address: str | None, debug: bool = False) -> bool:
    """Join `address`, or start a local instance; True when this call started Ray.

    A program (or test) that connected itself keeps its connection. An address that cannot
    be reached is one sentence, not Ray's traceback.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    import logging

    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=debug,
            logging_level=logging.INFO if debug else logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "locally"
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        hint = ""
        if address and not os.environ.get("RAY_AUTH_MODE"):
            hint = "; a cluster with token authentication also needs RAY_AUTH_MODE=token"
        raise Pix2VideoError(f"Cannot start or reach Ray {where} ({first}){hint}.") from exc
    return True
