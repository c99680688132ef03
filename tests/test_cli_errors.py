"""Every command, given bad input, as a user runs it: one `error:` line, the documented
exit code, never a traceback. Also: bare groups print help, a closed pipe is quiet, a
key that is not UTF-8 is shown escaped, and a password never reaches stderr.

The bad-input runs are independent subprocesses (about a second each), so they run a
few at a time in one module fixture; each case is still its own test.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import typer
import yaml

from redismigrate.cli import app
from redismigrate.demo import sample_schema
from redismigrate.keytext import key_names, key_text
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args

PARALLEL = 3
DEAD_URL = "redis://127.0.0.1:1"
FLOAT16_PATCH = """version: 1
changes:
  update_fields:
    - {name: embedding, attrs: {datatype: float16}}
"""


def run(
    *args: str,
    env: dict[str, str],
    stdin: str = "",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    shown = (result.returncode, result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert "Exception ignored" not in result.stderr, shown
    assert result.returncode == code, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    assert needle.lower() in lines[0].lower(), shown


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # {url}, {dir} and {index} are filled in
    needle: str
    code: int = 2
    stdin: str = ""


U = ("--url", "{url}")
PLAN = ("plan", "-i", "{index}", "--plan-out", "{dir}/o.yaml")
PATCH = ("--schema-patch", "{dir}/patch.yaml")
CASES = [
    # the top level and every group
    Case("unknown-command", ("nosuchcommand",), "No such command"),
    Case("unknown-option", ("plan", "--bogus"), "No such option"),
    Case("index-unknown-command", ("index", "nosuch"), "No such command"),
    # demo
    Case("demo-docs-zero", ("demo", "--docs", "0"), "--docs"),
    # plan
    Case(
        "plan-missing-patch",
        (*PLAN, "--schema-patch", "{dir}/nope.yaml", *U),
        "does not exist",
    ),
    Case(
        "plan-malformed-patch",
        (*PLAN, "--schema-patch", "{dir}/broken.yaml", *U),
        "not valid YAML",
    ),
    Case(
        "plan-nonexistent-index",
        ("plan", "-i", "no_such_index_zz", "--plan-out", "{dir}/o.yaml", *PATCH, *U),
        "does not exist",
    ),
    Case(
        "plan-bad-mode",
        (*PLAN, *PATCH, "--mode", "sideways", *U),
        "sideways",
    ),
    Case(
        "plan-out-in-missing-folder",
        ("plan", "-i", "{index}", *PATCH, "--plan-out", "{dir}/no/dir/o.yaml", *U),
        "does not exist",
    ),
    Case(
        "plan-malformed-url",
        (*PLAN, *PATCH, "--url", "redis://"),
        "malformed Redis URL",
    ),
    # estimate
    Case("estimate-missing-plan", ("estimate", "--plan", "{dir}/nope.yaml", *U), "does not exist"),
    Case("estimate-not-a-plan", ("estimate", "--plan", "{dir}/not-a-plan.yaml", *U), "version"),
    Case(
        "estimate-unreachable-server",
        ("estimate", "--plan", "{dir}/plan.yaml", "--url", DEAD_URL),
        "cannot reach",
    ),
    # wizard
    Case("wizard-nonexistent-index", ("wizard", "-i", "no_such_index_zz", *U), "does not exist"),
    Case(
        "wizard-input-ends",
        ("wizard", "-i", "{index}", "--plan-out", "{dir}/w.yaml", *U),
        "input ended",
        stdin="",
    ),
    # apply
    Case(
        "apply-missing-plan",
        ("apply", "--plan", "{dir}/nope.yaml", "--backup-dir", "{dir}", *U),
        "does not exist",
    ),
    Case(
        "apply-malformed-plan",
        ("apply", "--plan", "{dir}/broken.yaml", "--backup-dir", "{dir}", *U),
        "not valid YAML",
    ),
    Case(
        "apply-workers-zero",
        ("apply", "--plan", "{dir}/plan.yaml", "--workers", "0", *U),
        "--workers",
    ),
    Case(
        "apply-backup-dir-is-a-file",
        ("apply", "--plan", "{dir}/plan.yaml", "--backup-dir", "{dir}/plan.yaml", *U),
        "not a directory",
    ),
    Case(
        "apply-bad-scheme",
        ("apply", "--plan", "{dir}/plan.yaml", "--backup-dir", "{dir}/bk", "--url", "ftp://x"),
        "scheme",
    ),
    # validate
    Case(
        "validate-malformed-plan", ("validate", "--plan", "{dir}/broken.yaml", *U), "not valid YAML"
    ),
    Case(
        "validate-port-out-of-range",
        ("validate", "--plan", "{dir}/plan.yaml", "--url", "redis://h:99999"),
        "port",
    ),
    # cut-over
    Case("cut-over-no-index", ("cut-over", "--index", "{dir}-no-such-index", *U), "no index"),
    Case("cut-over-bad-url", ("cut-over", "--index", "x", "--url", "redis://h:99999"), "port"),
    # throttle
    Case(
        "throttle-no-index",
        ("throttle", "--index", "{dir}-no-such-index", "--max-rate", "5", *U),
        "no index",
    ),
    Case(
        "throttle-zero-rate", ("throttle", "--index", "{index}", "--max-rate", "0", *U), "positive"
    ),
    Case("throttle-no-rate", ("throttle", "--index", "{index}", *U), "exactly one"),
    # rollback
    Case("rollback-missing-dir", ("rollback", "--backup-dir", "{dir}/nope", *U), "does not exist"),
    Case("rollback-empty-dir", ("rollback", "--backup-dir", "{dir}/empty", *U), "no backup"),
    # batches
    Case(
        "batch-plan-missing-patch",
        (
            "batch-plan",
            "--schema-patch",
            "{dir}/nope.yaml",
            "--plan-out",
            "{dir}/b.yaml",
            "--pattern",
            "*",
            *U,
        ),
        "does not exist",
    ),
    Case(
        "batch-plan-no-selection",
        ("batch-plan", *PATCH, "--plan-out", "{dir}/b.yaml", *U),
        "--pattern",
    ),
    Case(
        "batch-plan-bad-policy",
        (
            "batch-plan",
            *PATCH,
            "--plan-out",
            "{dir}/b.yaml",
            "--pattern",
            "*",
            "--failure-policy",
            "no",
            *U,
        ),
        "'no'",
    ),
    Case(
        "batch-apply-not-a-plan",
        ("batch-apply", "--plan", "{dir}/not-a-plan.yaml", "--backup-dir", "{dir}", *U),
        "version",
    ),
    Case(
        "batch-resume-missing-state",
        ("batch-resume", "--state", "{dir}/nope.yaml", *U),
        "does not exist",
    ),
    Case(
        "batch-status-malformed-state",
        ("batch-status", "--state", "{dir}/broken.yaml"),
        "not valid YAML",
    ),
    # history and index
    Case("history-limit-zero", ("history", "--limit", "0", *U), "--limit"),
    Case("history-unreachable-server", ("history", "--url", DEAD_URL), "cannot reach"),
    Case("index-list-no-scheme", ("index", "list", "--url", "localhost:6379"), "scheme"),
    Case(
        "index-info-nonexistent-index",
        ("index", "info", "-i", "no_such_index_zz", *U),
        "does not exist",
    ),
    Case("index-info-without-index", ("index", "info", *U), "--index"),
    # server (its state folder is the test's own: never a server someone else started)
    Case("server-start-port-out-of-range", ("server", "start", "--port", "99999"), "--port"),
    Case("server-stop-extra-argument", ("server", "stop", "now"), "unexpected extra argument"),
    Case("server-stop-port-not-ours", ("server", "stop", "--port", "1"), "no server"),
    Case("server-stop-port-and-all", ("server", "stop", "--port", "1", "--all"), "not both"),
    Case("server-list-extra-argument", ("server", "list", "now"), "unexpected extra argument"),
]


@dataclass
class Setup:
    env: dict[str, str]
    dir: Path
    index: str
    url: str


@pytest.fixture(scope="module")
def setup(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A small index, the input files the cases need, and a private server state folder."""
    folder = tmp_path_factory.mktemp("cli_errors")
    client = redis.Redis.from_url(redis_url)
    ns = f"e{uuid.uuid4().hex[:10]}"
    schema = sample_schema(name=f"{ns}_idx", dims=4, prefix=f"{ns}:")
    client.execute_command(*ft_create_args(schema))
    doc: dict[str, str | int | bytes] = {"title": "a", "category": "b", "price": 1}
    client.hset(f"{ns}:1", mapping={**doc, "embedding": np.ones(4, "f4").tobytes()})
    (folder / "patch.yaml").write_text(FLOAT16_PATCH)
    (folder / "broken.yaml").write_text("version: 1\nchanges: [1, 2\n")
    (folder / "not-a-plan.yaml").write_text("hello: world\n")
    (folder / "empty").mkdir()
    (folder / "state").mkdir()
    env = {"REDISMIGRATE_STATE_DIR": str(folder / "state"), "REDIS_URL": DEAD_URL}
    planned = run(
        "plan", "-i", schema.name, "--schema-patch", str(folder / "patch.yaml"),
        "--plan-out", str(folder / "plan.yaml"), "--url", redis_url, env=env,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    yield Setup(env=env, dir=folder, index=schema.name, url=redis_url)
    client.execute_command("FT.DROPINDEX", schema.name, "DD")
    client.close()


BARE_GROUPS: list[tuple[str, ...]] = [(), ("index",), ("server",)]
SECRET_URLS = [
    "redis://:Zq7Pa55@Xw9word@127.0.0.1:1",
    "redis://user:Zq7p@ss:Xw9@127.0.0.1:1/0",
    "redis://127.0.0.1:1/0?password=Zq7s3@Xw9",
    "redis://user:Zq7/Xw9@127.0.0.1:1",
]


@pytest.fixture(scope="module")
def results(setup: Setup) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every single-run case of this module, run a few at a time."""
    jobs: dict[str, tuple[list[str], str]] = {
        case.id: (
            [a.format(url=setup.url, dir=setup.dir, index=setup.index) for a in case.args],
            case.stdin,
        )
        for case in CASES
    }
    jobs |= {f"bare:{' '.join(group)}": (list(group), "") for group in BARE_GROUPS}
    jobs |= {f"secret:{url}": (["index", "list", "--url", url], "") for url in SECRET_URLS}

    def one(job: tuple[list[str], str]) -> subprocess.CompletedProcess[str]:
        return run(*job[0], env=setup.env, stdin=job[1])

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(jobs, pool.map(one, jobs.values()), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_error_line_and_the_documented_code(
    case: Case, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    assert_one_error_line(results[case.id], case.code, case.needle)


def test_the_table_covers_every_command() -> None:
    """Every command ``redismigrate --help`` and each group's help list has a case."""
    root = typer.main.get_command(app)
    commands: set[str] = set()
    for name, command in getattr(root, "commands", {}).items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            commands |= {f"{name} {sub}" for sub in subcommands}
        else:
            commands.add(name)
    covered = {
        " ".join(c.args[:2]) if c.args[0] in ("index", "server") else c.args[0] for c in CASES
    }
    assert {"plan", "apply", "batch-status", "index list", "server stop"} <= commands
    assert commands <= covered, sorted(commands - covered)


# --------------------------------------------------------------------------- bare groups


@pytest.mark.parametrize("group", BARE_GROUPS, ids=["top", "index", "server"])
def test_a_bare_group_prints_its_usage_and_exits_0(
    group: tuple[str, ...], results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = results[f"bare:{' '.join(group)}"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: {' '.join(['redismigrate', *group])} ")
    assert "Commands:" in result.stdout


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_password_never_reaches_stderr(
    url: str, results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = results[f"secret:{url}"]
    assert_one_error_line(result, 2, "Redis URL" if "/Xw9" in url else "cannot reach")
    assert "Zq7" not in result.stderr + result.stdout
    assert "Xw9" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- closed pipe


def _closed_pipe(args: Sequence[str], env: dict[str, str], read_lines: int) -> tuple[int, str]:
    """Run with stdout a pipe closed after reading ``read_lines`` lines (0: at once)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redismigrate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(read_lines):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("read_lines", [0, 1], ids=["closed-at-once", "head-1"])
def test_a_closed_pipe_is_quiet_and_the_command_still_finishes(
    setup: Setup, read_lines: int
) -> None:
    out = setup.dir / f"piped-{read_lines}.yaml"
    code, err = _closed_pipe(
        ["plan", "-i", setup.index, "--schema-patch", str(setup.dir / "patch.yaml"),
         "--plan-out", str(out), "--url", setup.url],
        setup.env,
        read_lines,
    )  # fmt: skip
    assert err == "" and code == 0, (code, err)
    assert MigrationPlan.load(out).supported  # written although nobody read the summary
    code, err = _closed_pipe(["index", "list", "--url", setup.url], setup.env, read_lines)
    assert err == "" and code == 0, (code, err)


def test_help_into_a_closed_pipe_exits_141_quietly(setup: Setup) -> None:
    code, err = _closed_pipe(["--help"], setup.env, 0)
    assert err == "" and code == 141, (code, err)


# --------------------------------------------------------------------------- key names


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (b"doc:1", "doc:1"),
        ("café:1".encode(), "café:1"),
        (b"doc:\xff\xfe", "doc:\\xff\\xfe"),
        (b"a\\b\xff", "a\\\\b\\xff"),  # a backslash in a key that is not UTF-8 is doubled
        (b"lit\\xff", "lit\\xff"),  # a UTF-8 key that only looks escaped stays as it is
        (b"\x00nul", "\x00nul"),
    ],
)
def test_key_text_is_valid_utf8_and_reads_back(key: bytes, shown: str) -> None:
    assert key_text(key) == shown
    assert key_text(key.decode("utf-8", "surrogateescape")) == shown
    shown.encode("utf-8")  # printable, and valid in YAML and JSON files
    assert key in key_names(shown)
    assert key_names(shown)[0] == key or key_text(key_names(shown)[0]) == shown


@pytest.fixture
def binary_key_index(sync_client: redis.Redis, ns: str) -> Iterator[tuple[str, bytes]]:
    schema = sample_schema(name=f"{ns}_bin", dims=4, prefix=f"{ns}:b:")
    sync_client.execute_command(*ft_create_args(schema))
    odd = f"{ns}:b:".encode() + b"\xff\xfe"
    doc: dict[str, str | int | bytes] = {"title": "t", "category": "c", "price": 1}
    for key in (odd, f"{ns}:b:ok".encode()):
        sync_client.hset(key, mapping={**doc, "embedding": np.ones(4, "f4").tobytes()})
    yield schema.name, odd
    sync_client.delete(odd)


def test_a_key_that_is_not_utf8_is_planned_applied_and_shown_escaped(
    setup: Setup, binary_key_index: tuple[str, bytes], sync_client: redis.Redis, tmp_path: Path
) -> None:
    index, odd = binary_key_index
    shown = odd[:-2].decode() + "\\xff\\xfe"
    plan_path, backup, report = tmp_path / "plan.yaml", tmp_path / "backup", tmp_path / "r.yaml"
    planned = run(
        "plan", "-i", index, "--schema-patch", str(setup.dir / "patch.yaml"),
        "--plan-out", str(plan_path), "--url", setup.url, env=setup.env,
    )  # fmt: skip
    assert planned.returncode == 0 and "Traceback" not in planned.stderr, planned.stderr
    assert shown in MigrationPlan.load(plan_path).source.keyspace.key_sample
    assert shown in plan_path.read_text()  # the YAML holds the escaped text

    applied = run(
        "apply", "--plan", str(plan_path), "--backup-dir", str(backup), "--url", setup.url,
        "--report-out", str(backup / "report.yaml"), env=setup.env,
    )  # fmt: skip
    assert applied.returncode == 0, (applied.stdout[-2000:], applied.stderr)
    assert "Validation: passed" in applied.stdout  # the escaped sampled key was found
    assert len(sync_client.hget(odd, "embedding") or b"") == 4 * 2  # re-encoded to float16
    # every file in the backup directory, the report and plan copy included, is 0600
    files = [p for p in backup.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"report.yaml", f"migration_backup_{index}.data"}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o600)

    # the application overwrites that document's vector: validation names its key, escaped
    sync_client.hset(odd, "embedding", np.full(4, 7, "f2").tobytes())
    checked = run(
        "validate", "--plan", str(plan_path), "--url", setup.url, "--backup-dir", str(backup),
        "--report-out", str(report), env=setup.env,
    )  # fmt: skip
    assert checked.returncode == 1, (checked.stdout[-2000:], checked.stderr)
    assert "Traceback" not in checked.stdout + checked.stderr
    data = yaml.safe_load(report.read_text())
    assert shown in data["validation"]["vectors_mismatched"], data


def test_a_broken_pipe_that_is_not_stdout_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A socket's EPIPE (the server went away) is a failure, not a closed stdout."""
    import redismigrate.cli as cli_module

    def broken(args: list[str]) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_module, "_run", broken)
    with pytest.raises(SystemExit) as info:
        cli_module.main(["index", "list"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected BrokenPipeError") and err.count("\n") == 1
