"""The ``redismigrate`` command line: parses arguments, calls the library, renders with rich."""

from __future__ import annotations

import errno
import importlib
import os
import sys
from types import ModuleType
from typing import Any, NoReturn

import typer

from redismigrate.cli._app import app
from redismigrate.cli._pipe import discard_stdout, flush_stdout, stdout_reader_gone
from redismigrate.errors import RedisMigrateError
from redismigrate.urls import redact_url

__all__ = ["app", "main"]

PROG_NAME = "redismigrate"
# the command finished but a write to stdout failed outside the console (its reader went
# away): 128 + SIGPIPE, what a shell reports for a program killed by SIGPIPE
EXIT_BROKEN_PIPE = 141


def _click_module() -> ModuleType | None:
    """The ``click`` package when it is installed: typer releases before 0.2x are built on
    it (typer 0.2x carries its own copy, whose errors are typer's public classes)."""
    try:
        return importlib.import_module("click")
    except ImportError:
        return None


def _classes(*candidates: Any) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for candidate in candidates:
        is_class = isinstance(candidate, type) and issubclass(candidate, BaseException)
        if is_class and candidate not in found:
            found.append(candidate)
    return tuple(found)


# Only public names: typer's own exceptions (typer.Exit, typer.Abort, and
# typer.TyperException, the base of every click-style error in typer 0.2x) and, when it
# is installed, click's (for typer built on click, where typer.Exit is click's Exit).
_click = _click_module()
_CLICK_ERRORS = _classes(
    getattr(typer, "TyperException", None),
    getattr(_click, "ClickException", None),
)
_ABORT = _classes(typer.Abort, getattr(getattr(_click, "exceptions", None), "Abort", None))
_EXIT = _classes(typer.Exit, getattr(getattr(_click, "exceptions", None), "Exit", None))


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed too: nowhere left to say it
        pass


def _fail(message: str, code: int) -> NoReturn:
    _write_stderr(f"error: {redact_url(' '.join(message.split()))}\n")
    flush_stdout()
    raise SystemExit(code)


def _is_no_args_help(exc: BaseException) -> bool:
    """A bare group (``redismigrate``, ``redismigrate index``): click 8.2+ and typer 0.2x
    raise NoArgsIsHelpError carrying the help text (click 8.1 prints it and exits 0)."""
    return type(exc).__name__ == "NoArgsIsHelpError"


def _click_error(exc: BaseException) -> NoReturn:
    if _is_no_args_help(exc):
        # a bare command group: its help, on stdout, and exit 0 (asking for help is no error)
        try:
            sys.stdout.write(str(getattr(exc, "format_message", lambda: "")()).rstrip() + "\n")
        except BrokenPipeError:
            discard_stdout()
        flush_stdout()
        raise SystemExit(0)
    message = str(getattr(exc, "format_message", lambda: str(exc))())
    code = getattr(exc, "exit_code", 1)
    code = code if isinstance(code, int) and code else 1
    ctx = getattr(exc, "ctx", None)
    if code == 2 and ctx is not None:  # a usage error: point at the command's help
        message += f" (see '{ctx.command_path} --help')"
    _fail(message, code)


def _run(args: list[str]) -> int:
    """Parse ``args`` and run the command; click-style errors propagate (not printed)."""
    cli = typer.main.get_command(app)
    try:
        with cli.make_context(PROG_NAME, args) as ctx:
            cli.invoke(ctx)
    except _EXIT as exc:
        code = getattr(exc, "exit_code", 0)
        return code if isinstance(code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``redismigrate`` console script: one error line, never a traceback.

    Exit codes: those of docs/guide.md; a bare command group prints its help and exits 0;
    a closed stdout discards the rest of the output quietly (141 only when a write
    outside the console hit it, for example a long help text).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(args)
    except RedisMigrateError as exc:
        _fail(str(exc), exc.exit_code)
    except _ABORT:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except EOFError:  # a prompt found no more input
        _fail("interrupted: the input ended", 130)
    except Exception as exc:
        if _CLICK_ERRORS and isinstance(exc, _CLICK_ERRORS):
            _click_error(exc)
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE and stdout_reader_gone():
            discard_stdout()  # a write outside the console found stdout closed
            raise SystemExit(EXIT_BROKEN_PIPE) from None
        if os.environ.get("REDISMIGRATE_DEBUG"):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (set REDISMIGRATE_DEBUG=1 for the traceback)",
            1,
        )
    flush_stdout()
    if code:
        raise SystemExit(code)
