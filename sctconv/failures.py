"""How a command fails: one line on stderr and a non-zero exit code, never a traceback (unless
``--debug``); SIGTERM (a timeout, SLURM, Kubernetes, docker stop) stops a command as Ctrl-C does, so
that it cleans up the same way."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable

import typer

from sctconv.errors import SctconvError

_state = {"tracebacks": False}


def show_tracebacks(on: bool) -> None:
    """With ``on`` (``--debug``), failures raise with their full traceback."""
    _state["tracebacks"] = on


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, SLURM, Kubernetes, docker stop), raised where the program is so that it cleans up as on
    Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def user_errors(command: Callable) -> Callable:
    """Turn every failure into one line on stderr and a non-zero exit (full traceback with --debug);
    SIGTERM stops the command as Ctrl-C does."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return command(*args, **kwargs)
        except SctconvError as exc:
            if _state["tracebacks"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, _Terminated)
            typer.echo("terminated" if terminated else "interrupted", err=True)
            sys.exit(143 if terminated else 130)
        except Exception as exc:  # a bug or an environment problem: still one line
            if _state["tracebacks"]:
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            typer.echo(f"error: unexpected {type(exc).__name__}: {message} (run with --debug for the traceback)",
                       err=True)
            sys.exit(2)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper
