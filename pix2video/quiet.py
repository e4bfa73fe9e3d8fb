"""Keeping the libraries' own logs, warnings and progress bars out of a front end's output."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


def quiet_libraries(debug: bool = False) -> contextlib.AbstractContextManager:
    """Within the block, library warnings are hidden (not with ``debug``); see `silence_libraries`."""
    stack = contextlib.ExitStack()
    if debug:
        return stack
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    silence_libraries()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def silence_libraries() -> None:
    """diffusers / transformers / huggingface_hub: errors only and no progress bars.

    Only libraries already imported are configured (importing diffusers takes seconds, and
    a command that fails on its input should fail at once); the edit job calls this again
    once it has imported the pipeline.
    """
    if "diffusers" in sys.modules:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    if "transformers" in sys.modules:
        import transformers.utils.logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
