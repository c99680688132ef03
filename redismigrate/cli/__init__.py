"""The ``redismigrate`` command line: parses arguments, calls the library, renders with rich."""

from __future__ import annotations

import importlib
import os
import sys
from typing import NoReturn

import typer

from redismigrate.cli._app import app
from redismigrate.errors import RedisMigrateError
from redismigrate.urls import redact_url

__all__ = ["app", "main"]

# Typer 0.2x bundles its own copy of click; older releases use click itself.
try:
    _click_exc = importlib.import_module("typer._click.exceptions")
except ImportError:  # pragma: no cover - depends on the installed typer
    _click_exc = importlib.import_module("click.exceptions")


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"error: {redact_url(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``redismigrate`` console script: one error line, never a traceback."""
    cli = typer.main.get_command(app)
    try:
        code = cli.main(args=argv, prog_name="redismigrate", standalone_mode=False)
    except RedisMigrateError as exc:
        _fail(str(exc), exc.exit_code)
    except _click_exc.UsageError as exc:
        if type(exc).__name__.startswith("NoArgsIsHelp"):
            # a bare group: click already printed its help
            raise SystemExit(0) from None
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(f"{exc.format_message()}{hint}", 2)
    except _click_exc.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or 1)
    except _click_exc.Abort:
        _fail("interrupted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("REDISMIGRATE_DEBUG"):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (set REDISMIGRATE_DEBUG=1 for the traceback)",
            1,
        )
    if isinstance(code, int) and code:
        raise SystemExit(code)
