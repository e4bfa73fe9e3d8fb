"""How every `pix2video` command fails: one sentence on stderr, never a traceback by default.

A `Pix2VideoError` or a usage error is one sentence and exit code 2 (``--debug`` adds the
traceback), Ctrl-C exits 130 with a message saying what was kept, anything else is one
line naming the unexpected error.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import click

from ..errors import Pix2VideoError, describe_failure

INTERRUPTED = "Interrupted; finished work is cached, re-run the same command to resume."
INTERRUPTED_NO_CACHE = "Interrupted; nothing was kept (--no-cache)."


class State:
    """Per-invocation flags the error handler needs after the command's context is gone."""

    debug = False
    interrupted_message = INTERRUPTED


STATE = State()


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Interrupted(click.ClickException):
    exit_code = 130


class Pix2VideoGroup(click.Group):
    """A click group whose errors are one line on stderr (plus the traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # before click turns it into a bare "Aborted!"
            raise _Interrupted(STATE.interrupted_message) from exc

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        STATE.debug = False
        STATE.interrupted_message = INTERRUPTED
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _Interrupted as exc:
            fail(exc.message, 130, exc, prefix="")
        except click.exceptions.Abort as exc:
            fail(STATE.interrupted_message, 130, exc, prefix="")
        except _NO_ARGS_IS_HELP as exc:  # bare `pix2video`: the help, not an error line
            click.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = exc.format_message().rstrip(".")
            context = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and context is not None:
                message += f" (see '{context.command_path} --help')"
            fail(f"{message}.", exc.exit_code, exc)
        except Pix2VideoError as exc:
            fail(str(exc), exc.exit_code, exc)
        except Exception as exc:  # noqa: BLE001 - a bug or an environment problem
            fail(_unexpected(exc), 1, exc)
        sys.exit(rv if isinstance(rv, int) else 0)


def _unexpected(exc: BaseException) -> str:
    return describe_failure(exc, hint="re-run with --debug for the traceback")


def fail(message: str, code: int, exc: BaseException, prefix: str = "Error: ") -> None:
    if STATE.debug:
        traceback.print_exception(exc)
    click.echo(f"{prefix}{message}", err=True)
    sys.exit(code)


def set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    STATE.debug = bool(value)
    return value
