"""``--config``: a YAML or TOML file whose keys become a command's option defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..errors import InputError


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) file as a dict (other suffixes: tried as YAML)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"The config file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError as exc:
                raise InputError(
                    f"Reading {path} needs Python 3.11+ or the tomli package; or use YAML."
                ) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"The config file {path} is not valid TOML ({exc}).") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())
            raise InputError(f"The config file {path} is not valid YAML ({reason}).") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"The config file {path} must hold option: value pairs.")
    return data


def apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback of --config: the file's values become this command's defaults.

    Keys are option names with - or _ (``guidance-scale`` or ``guidance_scale``); a table
    named after the command (``[edit]`` / ``edit:``) overrides top-level keys, tables for
    other commands are ignored, so one file can serve several subcommands. Options given
    on the command line override the file.
    """
    if value is None or ctx.resilient_parsing:
        return value
    data = read_config(value)
    known = {p.name for p in ctx.command.params if p.name and p.name != "config"}
    # top-level tables are sections of commands (this one's is merged below; others' skipped)
    merged = {str(k): v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(ctx.info_name)
    if isinstance(section, dict):
        merged.update({str(k): v for k, v in section.items()})
    values = {}
    for key, item in merged.items():
        name = key.strip().lstrip("-").replace("-", "_")
        if name not in known:
            raise InputError(
                f"The config file {value} has an unknown key '{key}'; keys are the options of "
                f"'{ctx.command_path}' (see --help)."
            )
        values[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value
