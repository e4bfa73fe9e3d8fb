"""Value checks shared by every place that takes options (settings, the edit options).

Each raises `OptionError` naming the option as given, with one sentence: "must be one of
...", "must be a whole number", "must be between ...". Importing this does not import torch.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import OptionError


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(name, f"must be one of {', '.join(choices)}; got {value!r}.")


def check_integer(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(name, f"must be a whole number; got {value!r}.")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise OptionError(name, f"must be {bound}; got {value}.")


def check_number(name: str, value: Any, lo: float, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionError(name, f"must be a number; got {value!r}.")
    if not math.isfinite(value):
        raise OptionError(name, f"must be a finite number; got {value}.")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
        raise OptionError(name, f"must be {bound}; got {value:g}.")
