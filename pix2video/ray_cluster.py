"""Joining or starting Ray, for every part that runs on it (`batch --backend ray`, one clip's
workers in `job.workers`). Ray is imported only when one of them runs.
"""

from __future__ import annotations

import os
import socket

from .errors import Pix2VideoError

RAY_MISSING = "The ray backend needs Ray: pip install 'pix2video[ray]'."
PROBE_SECONDS = 3.0
"""How long an address may take to accept a connection (Ray itself retries for minutes)."""


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
    probe(address)
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


def probe(address: str | None) -> None:
    """One sentence, in seconds, if nothing listens at a cluster's HOST:PORT (or ray://HOST:PORT).

    None, auto and local (a new or this machine's running Ray) are not probed.
    """
    if address in (None, "auto", "local"):
        return
    where = address.removeprefix("ray://")
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        raise Pix2VideoError(f"The Ray address {address!r} is not HOST:PORT (or auto).")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise Pix2VideoError(
            f"Cannot reach Ray at {address} ({reason.lower().rstrip('.')}); is the cluster "
            "running (ray start --head) and the address its head's?"
        ) from None
