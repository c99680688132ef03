"""Progress as a person sees it: plain lines in a pipe, live bars with an ETA in a terminal
(a pty), an updating table in a Jupyter notebook (nbclient, a real kernel), against a
real server; and the renderer's rules on their own."""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from rich.console import Console

from redismigrate import progress as progress_module
from redismigrate.demo import sample_schema
from redismigrate.progress import STEP_LABELS, StepProgress
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema

BIG = 100_000
TO_FLOAT16 = "changes:\n  update_fields:\n    - name: embedding\n      attrs: {datatype: float16}\n"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
RATE = re.compile(r"\(([\d,]+)/s")


def flat_index(client: redis.Redis, ns: str, docs: int) -> str:
    """A FLAT float32 index of ``docs`` documents with 8-dim vectors: quick to load."""
    layout = sample_schema(name=f"{ns}_p", dims=8, prefix=f"{ns}:p:").to_dict()
    layout["fields"][-1]["attrs"] = {
        "dims": 8,
        "algorithm": "flat",
        "datatype": "float32",
        "distance_metric": "cosine",
    }
    schema = IndexSchema.from_dict(layout)
    client.execute_command(*ft_create_args(schema))
    vectors = np.random.default_rng(7).normal(size=(docs, 8)).astype(np.float32)
    pipe = client.pipeline(transaction=False)
    for i in range(docs):
        document = {"title": f"t{i}", "category": "a", "price": i}
        pipe.hset(f"{ns}:p:{i}", mapping={**document, "embedding": vectors[i].tobytes()})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    return schema.name


def make_plan(redis_url: str, index: str, tmp_path: Path) -> Path:
    patch = tmp_path / "patch.yaml"
    patch.write_text(TO_FLOAT16)
    plan = tmp_path / "plan.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "redismigrate", "plan", "--index", index, "--url", redis_url,
         "--schema-patch", str(patch), "--plan-out", str(plan), "--mode", "drop_recreate"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return plan


# ---------------------------------------------------------------------- the renderer


def plain() -> tuple[StepProgress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, force_jupyter=False, width=80)
    return StepProgress(console), out


def test_plain_progress_lines_have_measured_rates_and_none_for_instant_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_SECONDS", 0.05)
    shown, out = plain()
    with shown:
        shown("backup", 0, 1000)
        shown("backup", 100, 1000)  # too soon for a line
        time.sleep(0.06)
        shown("backup", 500, 1000)  # a line: count, rate, time left
        time.sleep(0.06)
        shown("backup", 1000, 1000)  # the step's end
        shown("backup", 1000, 1000)  # its end reported again: nothing
        shown("indexing", 450, 450)  # done at its first call: no rate to give
        shown("reconcile", 0, None)
        shown("reconcile", 0, 0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert re.fullmatch(r"Back up vectors: 500/1,000 \([\d,]+/s, 0:00:0\d left\)", lines[0])
    assert re.fullmatch(r"Back up vectors: 1,000/1,000 in 0\.\d s \([\d,]+/s\)", lines[1])
    assert all(int(r.replace(",", "")) > 0 for r in RATE.findall("\n".join(lines)))
    assert lines[2] == "Build the index: 450/450 in 0.0 s"
    assert lines[3] == "Reconcile app writes: 0 in 0.0 s"


def test_a_step_run_again_starts_afresh_and_a_batch_prints_its_indexes() -> None:
    shown, out = plain()
    with shown:
        shown.index("a_idx", 1, 2, "in_progress")
        shown("backup", 0, 10)
        shown("backup", 10, 10)
        shown.index("a_idx", 1, 2, "succeeded")
        shown.index("b_idx", 2, 2, "in_progress")
        shown("backup", 0, 20)
        shown("backup", 20, 20)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] a_idx: in_progress"
    assert lines[1].startswith("Back up vectors: 10/10 in ")
    assert lines[2:4] == ["[1/2] a_idx: succeeded", "[2/2] b_idx: in_progress"]
    assert lines[4].startswith("Back up vectors: 20/20 in ")


def test_the_core_imports_no_rich_until_progress_is_asked_for() -> None:
    code = (
        "import sys\n"
        "import redismigrate, redismigrate.sync, redismigrate.aio.executor, redismigrate.progress\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'typer')))\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    assert set(STEP_LABELS) >= {"backup", "reencode", "indexing", "restore"}


# ---------------------------------------------------------------------- the CLI


def test_a_piped_apply_prints_few_progress_lines_all_with_real_rates(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    index = flat_index(sync_client, ns, BIG)
    plan = make_plan(redis_url, index, tmp_path)
    report_path = tmp_path / "report.yaml"
    applied = subprocess.run(
        [sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan), "--url", redis_url,
         "--backup-dir", str(tmp_path / "backup"), "--report-out", str(report_path)],
        capture_output=True, text=True, timeout=600,  # stdout is a pipe
    )  # fmt: skip
    assert applied.returncode == 0, (applied.stdout, applied.stderr)
    labels = tuple(f"{label}: " for label in STEP_LABELS.values())
    lines = [line for line in applied.stdout.splitlines() if line.startswith(labels)]
    assert 2 <= len(lines) < 40, applied.stdout
    assert "(0/s" not in applied.stdout
    rates = [int(rate.replace(",", "")) for line in lines for rate in RATE.findall(line)]
    assert rates and all(rate > 0 for rate in rates), lines
    ends = {line.split(":")[0] for line in lines if " in " in line}
    assert {"Back up vectors", "Re-encode vectors", "Build the index"} <= ends, lines
    assert any(line.startswith(f"Back up vectors: {BIG:,}/{BIG:,} in ") for line in lines)
    # the step table: each step once, rates only where items were handled for a while
    report = MigrationReport.load(report_path)
    steps = [t.step for t in report.timings]
    assert len(steps) == len(set(steps)), steps
    indexing = next(t for t in report.timings if t.step == "indexing")
    assert indexing.items == 0 and indexing.per_second is None  # built while re-encoding
    for timing in report.timings:
        if timing.per_second is not None:
            assert timing.items and timing.seconds >= 0.05
    assert len([line for line in applied.stdout.splitlines() if "│ create" in line]) == 1


def run_in_pty(args: list[str], timeout: float) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal as its stdin, stdout and stderr."""
    main, child = os.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    for name in ("NO_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "JUPYTER_COLUMNS"):
        env.pop(name, None)
    proc = subprocess.Popen(args, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_an_interactive_apply_shows_live_bars_with_an_eta(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    index = flat_index(sync_client, ns, BIG)
    plan = make_plan(redis_url, index, tmp_path)
    code, out = run_in_pty(
        [sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan), "--url", redis_url,
         "--backup-dir", str(tmp_path / "backup")],
        timeout=600,
    )  # fmt: skip
    assert code == 0, out[-3000:]
    # a real time remaining (not rich's -:--:-- placeholder), next to a bar's count
    etas = re.findall(r"(\d[\d,]*)/100,000 +[\d,]+/s +ETA (\d+):(\d\d):(\d\d)", out)
    assert etas, out[-3000:]
    assert re.search(r"Re-encode vectors .*100,000/100,000 +[\d,]+/s +took \d+:\d\d:\d\d", out)


# ---------------------------------------------------------------------- a notebook

NOTEBOOK_CELL = """\
import asyncio, gc, json, warnings

warnings.simplefilter("error", ResourceWarning)
import redismigrate.sync
from redismigrate.plan import MigrationPlan

loop_running = asyncio.get_event_loop().is_running()  # Jupyter's own loop
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    report = redismigrate.sync.MigrationExecutor().apply(
        MigrationPlan.load(PLAN), redis_url=URL, backup_dir=BACKUP, progress=True
    )
    result = report.result
    del report
    gc.collect()
print("OUTCOME", json.dumps({
    "loop_running": loop_running,
    "result": result,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


def test_a_notebook_shows_progress_and_no_resource_warning(
    redis_url: str,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    manager = pytest.importorskip("jupyter_client.manager")
    docs = 20_000
    index = flat_index(sync_client, ns, docs)
    plan = make_plan(redis_url, index, tmp_path)
    # the kernel is this interpreter, described in a folder of the test's own; Jupyter's
    # and IPython's files go there too: nothing is registered or written elsewhere
    jupyter = tmp_path / "jupyter"
    for name, sub in [
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("IPYTHONDIR", "ipython"),
    ]:
        (jupyter / sub).mkdir(parents=True)
        monkeypatch.setenv(name, str(jupyter / sub))
    spec = jupyter / "kernels" / "redismigrate-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "redismigrate test",
                "language": "python",
            }
        )
    )
    kernels = kernelspec.KernelSpecManager(kernel_dirs=[str(jupyter / "kernels")])
    km = manager.KernelManager(kernel_name="redismigrate-test", kernel_spec_manager=kernels)
    source = (
        f"PLAN, URL, BACKUP = {str(plan)!r}, {redis_url!r}, {str(tmp_path / 'backup')!r}\n"
        + NOTEBOOK_CELL
    )
    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_code_cell(source))
    nbclient.NotebookClient(notebook, km=km, timeout=600).execute()

    outputs = notebook.cells[0].outputs
    printed = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    outcome = json.loads(printed.split("OUTCOME", 1)[1])
    assert outcome["loop_running"] is True
    assert outcome["result"] == "succeeded"
    assert not [w for w in outcome["warnings"] if w.startswith("ResourceWarning")], outcome
    shown = [o for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1, outputs  # one output, updated in place
    text, html = shown[0]["data"]["text/plain"], shown[0]["data"]["text/html"]
    assert f"{docs:,}/{docs:,}" in text
    for label in ("Back up vectors", "Re-encode vectors", "Build the index"):
        assert label in text and label in html
    assert re.search(r"Re-encode vectors .*[\d,]+/s +took \d+:\d\d:\d\d", text), text
    assert html.startswith("<pre")


# ---------------------------------------------------------------------- progress=True


def test_the_blocking_api_shows_progress_for_apply_rollback_and_a_batch(
    redis_url: str,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from redismigrate.aio.batch import load_batch_plan
    from redismigrate.plan import MigrationPlan
    from redismigrate.sync import BatchMigrationExecutor, BatchMigrationPlanner, MigrationExecutor

    docs = 2_000
    index = flat_index(sync_client, ns, docs)
    plan = MigrationPlan.load(make_plan(redis_url, index, tmp_path))
    backup = tmp_path / "backup"
    report = MigrationExecutor().apply(plan, redis_url=redis_url, backup_dir=backup, progress=True)
    assert report.succeeded
    MigrationExecutor().rollback(
        backup_dir=backup, redis_url=redis_url, recreate_index=True, progress=True
    )
    out = capsys.readouterr().out  # not a terminal: plain lines
    for label in ("Back up vectors", "Re-encode vectors", "Restore vectors"):
        assert f"{label}: {docs:,}/{docs:,} in " in out, out
    assert "(0/s" not in out

    BatchMigrationPlanner().create_batch_plan(
        redis_url=redis_url,
        indexes=[index],
        schema_patch_path=tmp_path / "patch.yaml",
        plan_out=tmp_path / "batch.yaml",
        mode="drop_recreate",
    )
    seen: list[tuple[str, int, int, str]] = []
    batch = BatchMigrationExecutor().apply(
        load_batch_plan(tmp_path / "batch.yaml"),
        batch_plan_path=tmp_path / "batch.yaml",
        redis_url=redis_url,
        state_path=tmp_path / "state.yaml",
        backup_dir=tmp_path / "batch_backup",
        accept_data_loss=True,
        progress_callback=lambda *call: seen.append(call),
        progress=True,
    )
    assert batch.status == "completed", batch
    out = capsys.readouterr().out
    assert f"[1/1] {index}: in_progress" in out and f"[1/1] {index}: succeeded" in out
    assert f"Re-encode vectors: {docs:,}/{docs:,} in " in out, out
    assert [status for *_, status in seen] == ["in_progress", "succeeded"]  # still called
