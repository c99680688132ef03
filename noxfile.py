"""Developer sessions: tests, lint, typecheck, demo, bench.

Run one with ``python3 -m nox -s NAME``; each builds its own virtualenv under .nox/.
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

PACKAGE = "redismigrate"
BENCH_BASELINE = "eebc680"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against a real Redis with the search module (started for you)."""
    session.install("-e", ".[dev]")
    # both cores: each worker takes whole test files and starts its own server
    session.run("pytest", *(session.posargs or ["-n", "2", "--dist", "loadfile"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and formatting) and the check that the generated sync API is current."""
    session.install("-e", ".[dev]")  # the pinned ruff, which also formats redismigrate/sync.py
    session.run("ruff", "check", PACKAGE, "tests", "benchmarks", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", PACKAGE, "tests", "benchmarks", "tools", "noxfile.py")
    session.run("python", "tools/gen_sync.py", "--check")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The whole job on a throwaway embedded server, then the server stops."""
    session.install("-e", ".[dev]")
    session.run("redismigrate", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Side by side with RedisVL's migrator (benchmarks/compare.py; printed and written as JSON).

    RedisVL is installed here only, never as a dependency of the package.
    """
    session.install("-e", ".[dev]", "redisvl==0.28.0")
    # the baseline is the code from before the safety work (issue #12): run in the same
    # rounds at default settings, it shows what the guarantees cost on this machine today
    args = session.posargs or [
        "--docs", "100000", "--dims", "768", "--rounds", "3", "--baseline", BENCH_BASELINE,
    ]  # fmt: skip
    session.run("python", "benchmarks/compare.py", *args)
