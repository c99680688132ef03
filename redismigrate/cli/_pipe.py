"""A closed stdout (``redismigrate index list | head -1``) is not an error.

Once the reader has gone, the rest of the output is thrown away: stdout is pointed
at the null device, so neither a later write nor the interpreter's flush at exit
fails (no traceback, no "Exception ignored" line). The command itself carries on:
an apply is never cut short because the program reading its output exited.
"""

from __future__ import annotations

import os
import select
import sys

from rich.console import Console

__all__ = ["PipeSafeConsole", "discard_stdout", "flush_stdout", "stdout_reader_gone"]


def discard_stdout() -> None:
    """Send whatever is still to be written to stdout to the null device."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # pragma: no cover - no null device
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout closed, replaced or not a file
        pass
    finally:
        os.close(devnull)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (a BrokenPipeError may also come
    from a socket, which is a real failure and must be reported)."""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return False
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in events)


def flush_stdout() -> bool:
    """Flush stdout; False (and stdout discarded) when its reader has gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
        return False
    except (OSError, ValueError, AttributeError):  # closed or replaced: nothing to lose
        return True
    return True


class PipeSafeConsole(Console):
    """A rich console that goes quiet when stdout's reader has gone.

    rich's own reaction is ``SystemExit(1)`` raised from inside whichever ``print``
    hit the closed pipe, which would stop a migration half way; here the output is
    dropped and the command runs on (rich documents ``on_broken_pipe`` for this).
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        discard_stdout()
