"""Side-by-side apply benchmark: redismigrate against RedisVL's migrator, plus a floor.

    python benchmarks/compare.py [--docs 100000] [--dims 768] [--storage hash|json]
        [--algorithm flat|hnsw] [--rounds 3] [--workers 1,4] [--modes sync[,async]]
        [--memory-growth] [--out benchmarks/results/compare.json] [--write-docs]

One throwaway Redis Stack server serves every run.  Before each run the server is
flushed, ``--docs`` documents with float32 vectors are loaded and a COSINE index is
built; then ONE tool plans and applies float32 -> float16 as its own process.  The
apply is timed from outside (wall clock), its own report is read (total, downtime,
steps) and its peak RSS is taken from ``os.wait4`` (in a small launcher, so that our
own pages are not counted).  redismigrate runs from a copy of the package taken at the
start, as others may edit the checkout meanwhile.  Every migration is checked
afterwards: FLOAT16 in FT.INFO, every document indexed, sampled vectors equal to the
float16 cast of the originals, and a KNN query that finds a sampled document.

The floor (hash storage only) is the bare job: read every vector once and write it
back re-encoded, with no enumeration, backup, index or validation, done with redis-py
pipelines, with hand-packed RESP on one socket, and on four sockets at once; and once
more on one socket into a live FLOAT16 index that indexes each write.

``--memory-growth`` instead runs both tools at 100,000 and 1,000,000 documents of 128
dims (hash, FLAT) and reports each apply's peak RSS at both sizes.

RedisVL (``redisvl``) is only installed in the bench environment (``nox -s bench``);
it is driven through its ``rvl`` command line, never imported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import redis
import yaml

import redismigrate
from redismigrate.report import MigrationReport
from redismigrate.server import EmbeddedRedis

INDEX = "cmp_idx"
PREFIX = b"cmp:"
FIELD = b"embedding"
SEED = 7
LOAD_CHUNK = 5_000
FLOOR_BATCH = 500
FEED_SLICE = 16 << 10
SAMPLES = 200
KNN_PROBES = 10
HNSW_EF_RUNTIME = 1000
APPLY_TIMEOUT = 20 * 60.0
INDEX_TIMEOUT = 20 * 60.0
TOOLS = ("redismigrate", "redisvl")
# redismigrate planned with --mode drop_recreate: the default for hash re-encoding is the
# online mode (zero downtime, a longer run) where the memory fits; this runs beside it,
# and is what the baseline (from before that default) is held against
DROP = "redismigrate-drop_recreate"
RUNNABLE = ("redismigrate", DROP, "redisvl")
# our own package at an earlier commit (--baseline), run in the same rounds at default
# settings: what a change cost or won, measured side by side on the same machine
BASELINE = "baseline"
BASELINE_TARGET = 1.10
STEPS = ("check", "enumerate", "backup", "drop", "reencode", "create", "indexing", "validate")
FLOORS = (
    "redis-py pipelines",
    "raw RESP, 1 connection",
    "raw RESP, 4 connections",
    "raw RESP, 1 connection, into a live FLOAT16 index",
    "downtime floor: drop, then float16 written into a live FLOAT16 index, 4 connections",
)
SERVER_CPU = "server CPU s: "
PATCH = """\
version: 1
changes:
  update_fields:
    - name: embedding
      attrs:
        datatype: float16
"""


# --------------------------------------------------------------------------- wire


def resp(*parts: bytes) -> bytes:
    """One command packed as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += (b"$%d\r\n" % len(part), part, b"\r\n")
    return b"".join(out)


class Raw:
    """A bare RESP2 socket: send packed commands, read N replies parsed by hiredis."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=APPLY_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, count: int) -> list[Any]:
        replies: list[Any] = []
        chunk, offset = b"", 0
        while len(replies) < count:
            reply = self.reader.gets()
            if reply is False:
                if offset >= len(chunk):
                    chunk, offset = self.sock.recv(1 << 20), 0
                    if not chunk:
                        raise ConnectionError("server closed the connection")
                # fed in slices: hiredis moves its unread buffer down after each reply
                size = min(FEED_SLICE, len(chunk) - offset)
                self.reader.feed(chunk, offset, size)
                offset += size
            elif isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"server error: {reply}")
            else:
                replies.append(reply)
        if offset < len(chunk):
            self.reader.feed(chunk, offset, len(chunk) - offset)
        return replies

    def close(self) -> None:
        self.sock.close()


def to_float16(values: Sequence[bytes]) -> list[bytes]:
    """Re-encode float32 vector blobs as float16 blobs (one numpy cast per batch)."""
    if not values:
        return []
    size = len(values[0]) // 2
    data = np.frombuffer(b"".join(values), dtype=np.float32).astype(np.float16).tobytes()
    return [data[i * size : (i + 1) * size] for i in range(len(values))]


def key(i: int) -> bytes:
    return PREFIX + str(i).encode()


# Others may edit the package while a benchmark runs: every redismigrate process of one
# benchmark runs from a copy taken at the start (PYTHONPATH), whose hash is recorded.
_SNAPSHOT: dict[str, str] = {}


def snapshot_package(scratch: Path) -> str:
    """Copy the redismigrate package into ``scratch``; the sha256 of its .py files."""
    source = Path(redismigrate.__file__).resolve().parent
    target = scratch / "src" / "redismigrate"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*.py")):
        digest.update(str(path.relative_to(target)).encode() + b"\0" + path.read_bytes())
    _SNAPSHOT["path"] = str(target.parent)
    probe = subprocess.run(
        [sys.executable, "-c", "import redismigrate; print(redismigrate.__file__)"],
        env=tool_env("redismigrate"),
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not probe.stdout.strip().startswith(str(target)):
        sys.exit(f"the package copy is not what runs: {probe.stdout}{probe.stderr}")
    return digest.hexdigest()[:16]


def snapshot_baseline(scratch: Path, ref: str) -> str:
    """Extract the redismigrate package of git ``ref`` into ``scratch``; its commit."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", f"{ref}^{{commit}}"],
            cwd=root, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        target = scratch / "baseline"
        target.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit, "redismigrate"],
            cwd=root, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    except (subprocess.CalledProcessError, OSError) as exc:
        sys.exit(f"--baseline {ref}: cannot extract it from git ({exc})")
    _SNAPSHOT["baseline"] = str(target)
    _SNAPSHOT["baseline_commit"] = commit
    probe = subprocess.run(
        [sys.executable, "-c", "import redismigrate; print(redismigrate.__file__)"],
        env=tool_env(BASELINE),
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if not probe.stdout.strip().startswith(str(target)):
        sys.exit(f"the baseline copy is not what runs: {probe.stdout}{probe.stderr}")
    return commit


def tool_env(tool: str) -> dict[str, str]:
    env = dict(os.environ)
    path = _SNAPSHOT.get("baseline" if tool == BASELINE else "path")
    if tool in (BASELINE, "redismigrate", DROP) and path:
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """What one run loads."""

    docs: int
    dims: int
    storage: str
    algorithm: str


def vectors(chunk_no: int, count: int, dims: int) -> np.ndarray:
    rng = np.random.default_rng([SEED, chunk_no])
    return rng.standard_normal((count, dims), dtype=np.float32)


def address(client: redis.Redis) -> tuple[str, int]:
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs["host"]), int(kwargs["port"])


def server_cpu(client: redis.Redis) -> tuple[float, float]:
    """CPU seconds the server has used: its main thread (commands, and the indexing of
    each write to an indexed hash) and the whole process (with the search module's
    background indexing thread, which builds an index created with a scan)."""
    cpu = client.info("cpu")
    process = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    if "used_cpu_user_main_thread" not in cpu:
        return process, process
    main = float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])
    return main, process


def reset(client: redis.Redis) -> None:
    """Drop every index and flush the (throwaway) server."""
    for name in client.execute_command("FT._LIST"):
        client.execute_command("FT.DROPINDEX", name)
    client.flushall()


def load(host: str, port: int, data: Dataset) -> float:
    """Write ``data.docs`` documents in pipelined chunks of raw RESP; seconds taken."""
    started = time.perf_counter()
    conn = Raw(host, port)
    try:
        for chunk_no, start in enumerate(range(0, data.docs, LOAD_CHUNK)):
            count = min(LOAD_CHUNK, data.docs - start)
            block = vectors(chunk_no, count, data.dims)
            if data.storage == "hash":
                packed = [
                    resp(
                        b"HSET",
                        key(start + j),
                        b"title",
                        b"doc %d" % (start + j),
                        FIELD,
                        row.tobytes(),
                    )
                    for j, row in enumerate(block)
                ]
            else:
                packed = [
                    resp(
                        b"JSON.SET",
                        key(start + j),
                        b"$",
                        json.dumps(
                            {"title": f"doc {start + j}", "embedding": row.tolist()}
                        ).encode(),
                    )
                    for j, row in enumerate(block)
                ]
            conn.send(b"".join(packed))
            conn.read(count)
    finally:
        conn.close()
    return time.perf_counter() - started


def create_index(
    client: redis.Redis, data: Dataset, datatype: str = "FLOAT32", skip_scan: bool = False
) -> float:
    """FT.CREATE the COSINE index and wait until it is built; seconds taken."""
    started = time.perf_counter()
    vector = ["TYPE", datatype, "DIM", str(data.dims), "DISTANCE_METRIC", "COSINE"]
    if data.storage == "hash":
        on, fields = "HASH", ["title", "TEXT", "embedding", "VECTOR"]
    else:
        on, fields = "JSON", ["$.title", "AS", "title", "TEXT", "$.embedding", "AS", "embedding"]
        fields.append("VECTOR")
    client.execute_command(
        "FT.CREATE", INDEX, "ON", on, "PREFIX", "1", PREFIX,
        *(["SKIPINITIALSCAN"] if skip_scan else []), "SCHEMA",
        *fields, data.algorithm.upper(), str(len(vector)), *vector,
    )  # fmt: skip
    wait_indexed(client)
    return time.perf_counter() - started


def wait_indexed(client: redis.Redis) -> None:
    deadline = time.monotonic() + INDEX_TIMEOUT
    while time.monotonic() < deadline:
        info = client.ft(INDEX).info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            return
        time.sleep(0.1)
    raise TimeoutError(f"index {INDEX} not built within {INDEX_TIMEOUT:.0f} s")


def sample_ids(docs: int) -> list[int]:
    rng = np.random.default_rng(SEED + 1)
    return sorted(int(i) for i in rng.choice(docs, size=min(SAMPLES, docs), replace=False))


def read_samples(client: redis.Redis, data: Dataset) -> dict[bytes, Any]:
    """The sampled documents' vectors before the migration."""
    pipe = client.pipeline(transaction=False)
    ids = [key(i) for i in sample_ids(data.docs)]
    for k in ids:
        if data.storage == "hash":
            pipe.hget(k, FIELD)
        else:
            pipe.execute_command("JSON.GET", k, "$.embedding")
    return dict(zip(ids, pipe.execute(), strict=True))


def knn_first(client: redis.Redis, blob: bytes, ef_runtime: int | None = None) -> Any:
    """The key of the nearest neighbour of ``blob`` (None when nothing came back)."""
    ef = " EF_RUNTIME $ef" if ef_runtime else ""
    params = ["v", blob, *(["ef", str(ef_runtime)] if ef_runtime else [])]
    found = client.execute_command(
        "FT.SEARCH", INDEX, f"*=>[KNN 1 @embedding $v{ef} AS d]",
        "PARAMS", str(len(params)), *params, "RETURN", "1", "d", "DIALECT", "2",
    )  # fmt: skip
    return found[1] if len(found) > 1 else None


def verify(client: redis.Redis, data: Dataset, before: dict[bytes, Any]) -> dict[str, Any]:
    """Check that the migration really happened; ``ok`` only when every check holds."""
    info = client.ft(INDEX).info()
    datatype = ""
    for attr in info["attributes"]:
        words = [x.decode() if isinstance(x, bytes) else str(x) for x in attr]
        named = "attribute" in words and words[words.index("attribute") + 1] == "embedding"
        if named and "data_type" in words:
            datatype = words[words.index("data_type") + 1]
    num_docs = int(info["num_docs"])
    failures = int(info.get("hash_indexing_failures", 0))

    pipe = client.pipeline(transaction=False)
    for k in before:
        if data.storage == "hash":
            pipe.hget(k, FIELD)
        else:
            pipe.execute_command("JSON.GET", k, "$.embedding")
    after = dict(zip(before, pipe.execute(), strict=True))
    mismatched = 0
    for k, old in before.items():
        new = after[k]
        if data.storage == "hash":
            good = (
                isinstance(new, bytes)
                and len(new) == data.dims * 2
                and new == np.frombuffer(old, np.float32).astype(np.float16).tobytes()
            )
        else:
            good = new is not None and len(json.loads(new)[0]) == data.dims
        mismatched += not good

    # Each probe's own vector must come back first. HNSW search is approximate, so there
    # the probes also run with a wide EF_RUNTIME, and only those count for ``ok``.
    probes = list(before)[:KNN_PROBES]
    hits, hits_wide = 0, 0
    for probe in probes:
        if data.storage == "hash":
            vec = np.frombuffer(before[probe], np.float32)
        else:
            vec = np.asarray(json.loads(before[probe])[0], np.float32)
        blob = vec.astype(np.float16).tobytes()
        hits += knn_first(client, blob) == probe
        if data.algorithm == "hnsw":
            hits_wide += knn_first(client, blob, ef_runtime=HNSW_EF_RUNTIME) == probe
    knn_ok = (hits_wide if data.algorithm == "hnsw" else hits) == len(probes)
    checks = {
        "datatype": datatype,
        "num_docs": num_docs,
        "indexing_failures": failures,
        "samples": len(before),
        "samples_mismatched": mismatched,
        "knn_probes": len(probes),
        "knn_self_hits": hits,
        **(
            {f"knn_self_hits_ef_runtime_{HNSW_EF_RUNTIME}": hits_wide}
            if data.algorithm == "hnsw"
            else {}
        ),
    }
    checks["ok"] = (
        datatype.upper() == "FLOAT16"
        and num_docs == data.docs
        and failures == 0
        and mismatched == 0
        and knn_ok
    )
    return checks


# --------------------------------------------------------------------------- tools


@dataclass
class Measured:
    """One child process: exit code, wall seconds, its own peak RSS, its output."""

    returncode: int
    wall: float
    peak_rss_mb: float
    output: str
    timed_out: bool = False
    client_cpu_seconds: float = 0.0


# A forked child starts out with its parent's resident pages and Linux keeps counting them
# in the child's ru_maxrss after exec, so a tool started straight from this (large)
# process would report at least our own size.  Tools are therefore started by this small
# launcher (its footprint, ~10 MB, is the floor of the figure): it spawns the tool,
# wait4()s it and writes the tool's own exit status, wall seconds and ru_maxrss.
LAUNCHER = """
import json, os, sys, time
out, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(command[0], command, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as f:
    json.dump({"status": status, "wall": wall, "maxrss_kb": usage.ru_maxrss,
               "cpu": usage.ru_utime + usage.ru_stime}, f)
"""


def run_measured(
    command: Sequence[str], log: Path, env: dict[str, str], timeout: float = APPLY_TIMEOUT
) -> Measured:
    """Run a command (via the launcher); its wall time, exit code and own peak RSS."""
    timed_out = threading.Event()
    figures = log.with_suffix(".rusage.json")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(figures), *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: a timeout kills launcher and tool
            env=env,
            cwd=log.parent,  # not the checkout: `python -m` puts the cwd first on sys.path
        )

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.wait()
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
    output = log.read_text(errors="replace")
    if proc.returncode != 0 or not figures.exists():
        return Measured(proc.returncode or -1, 0.0, 0.0, output, timed_out.is_set())
    child = json.loads(figures.read_text())
    return Measured(
        returncode=os.waitstatus_to_exitcode(child["status"]),
        wall=child["wall"],
        peak_rss_mb=child["maxrss_kb"] / 1024,  # KiB on Linux
        client_cpu_seconds=child.get("cpu", 0.0),
        output=output,
        timed_out=timed_out.is_set(),
    )


@dataclass(frozen=True)
class Config:
    """One tool configuration: which tool, how many workers, sync or async."""

    tool: str
    workers: int
    mode: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.tool, self.workers, self.mode)

    @property
    def label(self) -> str:
        tool = self.tool
        if tool == BASELINE:
            tool = f"redismigrate@{_SNAPSHOT.get('baseline_commit', 'baseline')}"
        elif tool == DROP:
            tool = "redismigrate --mode drop_recreate"
        return f"{tool} w={self.workers}" + (" async" if self.mode == "async" else "")


def rvl_command() -> str:
    beside = Path(sys.executable).with_name("rvl")
    found = str(beside) if beside.exists() else shutil.which("rvl")
    if not found:
        sys.exit("rvl not found: install redisvl==0.28.0 into this environment (nox -s bench)")
    return found


def plan_command(tool: str, url: str, patch: Path, plan: Path) -> list[str]:
    common = ["--index", INDEX, "--schema-patch", str(patch), "--url", url]
    if tool == DROP:
        common += ["--mode", "drop_recreate"]
    if tool != "redisvl":
        return [sys.executable, "-m", "redismigrate", "plan", *common, "--plan-out", str(plan)]
    return [rvl_command(), "migrate", "plan", *common, "--plan-out", str(plan)]


def apply_command(config: Config, url: str, plan: Path, work: Path, batch_size: int) -> list[str]:
    flags = [
        "--plan", str(plan), "--url", url, "--backup-dir", str(work / "backup"),
        "--workers", str(config.workers), "--batch-size", str(batch_size),
        "--report-out", str(work / "report.yaml"),
        *(["--async"] if config.mode == "async" else []),
    ]  # fmt: skip
    if config.tool != "redisvl":
        return [sys.executable, "-m", "redismigrate", "apply", *flags]
    return [rvl_command(), "migrate", "apply", *flags, "--benchmark-out", str(work / "bench.yaml")]


_RVL_PROGRESS = {
    "enumerate": re.compile(r"Enumerate keys: found [\d,]+ documents \(([\d.]+)s\)"),
    "backup": re.compile(r"dump: done \(([\d.]+)s\)"),
}
_RVL_TIMINGS = {
    "drop_duration_seconds": "drop",
    "quantize_duration_seconds": "reencode",
    "recreate_duration_seconds": "create",
    "initial_indexing_duration_seconds": "indexing",
    "validation_duration_seconds": "validate",
}


def read_report(tool: str, work: Path, output: str) -> dict[str, Any]:
    """A tool's own figures: total, downtime and seconds per step."""
    if tool != "redisvl":
        report = MigrationReport.load(work / "report.yaml")
        steps: dict[str, float] = {}
        for t in report.timings:
            steps[t.step] = steps.get(t.step, 0.0) + t.seconds
        return {
            "result": report.result,
            "total_seconds": report.total_seconds,
            "downtime_seconds": report.downtime_seconds,
            "steps": steps,
        }
    document = yaml.safe_load((work / "report.yaml").read_text())
    timings = document.get("timings") or {}
    steps = {
        ours: float(timings[theirs]) for theirs, ours in _RVL_TIMINGS.items() if theirs in timings
    }
    # Enumeration and the single-worker backup ("dump") are only in its progress output.
    for step, pattern in _RVL_PROGRESS.items():
        found = pattern.findall(output)
        if found:
            steps[step] = sum(float(s) for s in found)
    return {
        "result": document.get("result"),
        "total_seconds": float(timings.get("total_migration_duration_seconds", 0.0)),
        "downtime_seconds": float(timings.get("downtime_duration_seconds", 0.0)),
        "steps": steps,
    }


def fresh(
    server: redis.Redis, host: str, port: int, data: Dataset, index: bool
) -> dict[str, float]:
    reset(server)
    timing = {"load_seconds": round(load(host, port, data), 3)}
    if index:
        timing["index_build_seconds"] = round(create_index(server, data), 3)
    return timing


def migrate_once(
    config: Config, client: redis.Redis, url: str, data: Dataset, batch_size: int, scratch: Path
) -> dict[str, Any]:
    """Reload, then plan + apply with one tool; everything measured about that run."""
    host, port = address(client)
    record: dict[str, Any] = {"tool": config.tool, "workers": config.workers, "mode": config.mode}
    record["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
    record.update(fresh(client, host, port, data, index=True))
    before = read_samples(client, data)
    work = Path(tempfile.mkdtemp(prefix=f"{config.tool}-", dir=scratch))
    try:
        patch = work / "patch.yaml"
        patch.write_text(PATCH)
        plan = work / "plan.yaml"
        env = tool_env(config.tool)
        planned = run_measured(plan_command(config.tool, url, patch, plan), work / "plan.log", env)
        record["plan_wall_seconds"] = round(planned.wall, 3)
        if planned.returncode != 0:
            record.update(
                ok=False, error=f"plan exit {planned.returncode}: {planned.output[-2000:]}"
            )
            return record
        cpu_before = server_cpu(client)
        applied = run_measured(
            apply_command(config, url, plan, work, batch_size), work / "apply.log", env
        )
        cpu_after = server_cpu(client)
        record.update(
            server_main_thread_cpu_seconds=round(cpu_after[0] - cpu_before[0], 3),
            server_cpu_seconds=round(cpu_after[1] - cpu_before[1], 3),
            apply_wall_seconds=round(applied.wall, 3),
            peak_rss_mb=round(applied.peak_rss_mb, 1),
            client_cpu_seconds=round(applied.client_cpu_seconds, 3),
            exit_code=applied.returncode,
        )
        if applied.returncode != 0 or applied.timed_out:
            why = "timed out" if applied.timed_out else f"exit {applied.returncode}"
            record.update(ok=False, error=f"apply {why}: {applied.output[-3000:]}")
            return record
        try:
            record.update(read_report(config.tool, work, applied.output))
        except Exception as exc:  # a missing or unreadable report fails this run only
            record.update(ok=False, error=f"report unreadable: {type(exc).__name__}: {exc}")
            return record
        try:
            record["verify"] = verify(client, data, before)
        except (redis.RedisError, KeyError, ValueError) as exc:
            record["verify"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        record["ok"] = bool(record["verify"]["ok"]) and record.get("result") == "succeeded"
        if not record["ok"]:
            record["error"] = f"verification failed: {record['verify']}"
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- floor


def floor_redis_py(host: str, port: int, docs: int) -> float:
    """Read + re-encode + write every vector with redis-py pipelines of FLOOR_BATCH."""
    client = redis.Redis(host=host, port=port, protocol=2)
    started = time.perf_counter()
    for start in range(0, docs, FLOOR_BATCH):
        keys = [key(i) for i in range(start, min(docs, start + FLOOR_BATCH))]
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, FIELD)
        encoded = to_float16(pipe.execute())
        pipe = client.pipeline(transaction=False)
        for k, value in zip(keys, encoded, strict=True):
            pipe.hset(k, FIELD, value)
        pipe.execute()
    seconds = time.perf_counter() - started
    client.close()
    return seconds


def _raw_slice(host: str, port: int, ids: range) -> None:
    """Hand-packed HGETs; each batch's HSETs ride along with the next batch's HGETs."""
    conn = Raw(host, port)
    pending, waiting = b"", 0
    try:
        for start in range(ids.start, ids.stop, FLOOR_BATCH):
            keys = [key(i) for i in range(start, min(ids.stop, start + FLOOR_BATCH))]
            conn.send(pending + b"".join(resp(b"HGET", k, FIELD) for k in keys))
            values = conn.read(waiting + len(keys))[waiting:]
            encoded = to_float16(values)
            pending = b"".join(
                resp(b"HSET", k, FIELD, v) for k, v in zip(keys, encoded, strict=True)
            )
            waiting = len(keys)
        if waiting:
            conn.send(pending)
            conn.read(waiting)
    finally:
        conn.close()


def floor_raw(host: str, port: int, docs: int, connections: int) -> float:
    """The hand-packed floor on ``connections`` sockets at once (one thread each)."""
    bounds = np.linspace(0, docs, connections + 1).astype(int)
    slices = [range(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    started = time.perf_counter()
    if connections == 1:
        _raw_slice(host, port, slices[0])
    else:
        with ThreadPoolExecutor(max_workers=connections) as pool:
            for future in [pool.submit(_raw_slice, host, port, s) for s in slices]:
                future.result()
    return time.perf_counter() - started


def floor_indexed(client: redis.Redis, data: Dataset) -> float:
    """The 1-connection floor with a FLOAT16 target index (created without the initial
    scan) indexing every vector as it is written, until the index is complete."""
    host, port = address(client)
    started = time.perf_counter()
    create_index(client, data, datatype="FLOAT16", skip_scan=True)
    floor_raw(host, port, data.docs, 1)
    wait_indexed(client)
    seconds = time.perf_counter() - started
    if int(client.ft(INDEX).info()["num_docs"]) != data.docs:
        raise RuntimeError("the live-index floor left documents out of the index")
    return seconds


def _write_packed(host: str, port: int, batches: Sequence[tuple[bytes, int]]) -> None:
    conn = Raw(host, port)
    try:
        for commands, count in batches:
            conn.send(commands)
            conn.read(count)
    finally:
        conn.close()


def scan_order(client: redis.Redis) -> list[int]:
    """The document numbers in the order SCAN returns their keys."""
    order: list[int] = []
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=PREFIX.decode() + "*", count=1000)
        order += [int(k[len(PREFIX) :]) for k in found]
        if cursor == 0:
            return order


def floor_downtime(client: redis.Redis, data: Dataset, connections: int = 4) -> float:
    """The least downtime of an in-place re-encode that builds the index as it writes.

    The float16 vectors are packed as HSETs beforehand, in the order SCAN returns the
    keys (the order an enumeration by SCAN, or by an index built with a scan, gives;
    the server writes them more slowly than in key order, as their memory is not
    visited in sequence). Timed: dropping the FLOAT32 index (built beforehand, as the
    tools find it), creating the FLOAT16
    one without the initial scan, writing on ``connections`` sockets, until complete.
    No reads, no encoding: what is left is the server's work.
    """
    host, port = address(client)
    blobs: list[bytes] = []
    for chunk_no, start in enumerate(range(0, data.docs, LOAD_CHUNK)):
        count = min(LOAD_CHUNK, data.docs - start)
        blobs += [row.tobytes() for row in vectors(chunk_no, count, data.dims).astype(np.float16)]
    order = scan_order(client)
    batches: list[tuple[bytes, int]] = []
    for first in range(0, len(order), FLOOR_BATCH):
        rows = order[first : first + FLOOR_BATCH]
        packed = b"".join(resp(b"HSET", key(i), FIELD, blobs[i]) for i in rows)
        batches.append((packed, len(rows)))
    del blobs
    shares = [batches[i::connections] for i in range(connections)]
    started = time.perf_counter()
    client.execute_command("FT.DROPINDEX", INDEX)
    create_index(client, data, datatype="FLOAT16", skip_scan=True)
    with ThreadPoolExecutor(max_workers=connections) as pool:
        for future in [pool.submit(_write_packed, host, port, share) for share in shares]:
            future.result()
    wait_indexed(client)
    seconds = time.perf_counter() - started
    if int(client.ft(INDEX).info()["num_docs"]) != data.docs:
        raise RuntimeError("the downtime floor left documents out of the index")
    return seconds


def floor_once(client: redis.Redis, data: Dataset) -> dict[str, float]:
    """Each floor on freshly loaded float32 data (no index covers the keys at the start,
    but for the downtime floor, which starts by dropping the source index)."""
    host, port = address(client)
    jobs: dict[str, Callable[[], float]] = {
        FLOORS[0]: lambda: floor_redis_py(host, port, data.docs),
        FLOORS[1]: lambda: floor_raw(host, port, data.docs, 1),
        FLOORS[2]: lambda: floor_raw(host, port, data.docs, 4),
        FLOORS[3]: lambda: floor_indexed(client, data),
        FLOORS[4]: lambda: floor_downtime(client, data),
    }
    out: dict[str, float] = {}
    for name, job in jobs.items():
        fresh(client, host, port, data, index=name == FLOORS[4])
        cpu_before = server_cpu(client)
        out[name] = round(job(), 3)
        out[SERVER_CPU + name] = round(server_cpu(client)[1] - cpu_before[1], 3)
        probe = [client.hget(key(i), FIELD) for i in sample_ids(data.docs)[:20]]
        if any(v is None or len(v) != data.dims * 2 for v in probe):
            raise RuntimeError(f"floor {name!r} did not re-encode the vectors")
    return out


# --------------------------------------------------------------------------- summary


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return round(statistics.median(items), 3) if items else None


def of(runs: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """The runs made with one configuration."""
    return [r for r in runs if (r["tool"], r["workers"], r["mode"]) == config.key]


def summarize(runs: list[dict[str, Any]], configs: list[Config]) -> dict[str, dict[str, Any]]:
    """Medians per configuration over its successful runs."""
    table: dict[str, dict[str, Any]] = {}
    for config in configs:
        mine = of(runs, config)
        good = [r for r in mine if r.get("ok")]
        row: dict[str, Any] = {
            "tool": config.tool,
            "workers": config.workers,
            "mode": config.mode,
            "runs": len(mine),
            "failed": len(mine) - len(good),
        }
        for name in ("total_seconds", "downtime_seconds", "apply_wall_seconds", "peak_rss_mb"):
            row[name] = median(r[name] for r in good)
        for name in ("server_cpu_seconds", "server_main_thread_cpu_seconds"):
            row[name] = median(r[name] for r in good if name in r)
        steps = {s: median(r["steps"][s] for r in good if s in r["steps"]) for s in STEPS}
        if good:
            steps["other"] = median(
                r["total_seconds"] - sum(r["steps"].get(s, 0.0) for s in STEPS) for r in good
            )
        row["steps"] = steps
        moving = ("enumerate", "backup", "reencode")
        row["moving_seconds"] = median(sum(r["steps"].get(s, 0.0) for s in moving) for r in good)
        row["moving_and_indexing_seconds"] = median(
            sum(r["steps"].get(s, 0.0) for s in (*moving, "create", "indexing")) for r in good
        )
        table[config.label] = row
    return table


def per_round_ratios(
    runs: list[dict[str, Any]],
    field: str,
    ours: str = "redismigrate",
    peer: str = "redisvl",
    workers: int | None = None,
) -> list[float]:
    """Within each round: our best ``field`` over the peer's best (machine noise that
    slows one round slows both tools' runs in it alike); ``workers``: only runs with
    that many workers."""
    out: list[float] = []
    for number in sorted({r.get("round") for r in runs if r.get("round") is not None}):
        best: dict[str, float] = {}
        for r in runs:
            if workers is not None and (r.get("workers") != workers or r.get("mode") != "sync"):
                continue
            if r.get("round") == number and r.get("ok") and r.get(field) is not None:
                best[r["tool"]] = min(best.get(r["tool"], float("inf")), r[field])
        if ours in best and best.get(peer):
            out.append(round(best[ours] / best[peer], 3))
    return out


def baseline_headline(
    table: dict[str, dict[str, Any]], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Ours against our own earlier commit, both at default settings (1 worker), in the
    same mode: the baseline predates the online default, so it is held against
    ``--mode drop_recreate`` where that ran."""
    rows = {v["tool"]: v for v in table.values() if v["workers"] == 1 and v["mode"] == "sync"}
    name = DROP if DROP in rows else "redismigrate"
    ours, base = rows.get(name), rows.get(BASELINE)
    if not ours or not base:
        return {}
    out: dict[str, Any] = {"commit": _SNAPSHOT.get("baseline_commit"), "ours": name}
    for field in ("total_seconds", "downtime_seconds"):
        rounds = per_round_ratios(runs, field, name, BASELINE, workers=1)
        value = ratio(ours[field], base[field])
        out[field] = {
            "ours": ours[field],
            "baseline": base[field],
            "ratio of medians": value,
            "per round": rounds,
            "median of per-round ratios": median(rounds),
            "target": BASELINE_TARGET,
            "met": value is not None and value <= BASELINE_TARGET,
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def headline(
    table: dict[str, dict[str, Any]],
    floors: dict[str, float | None],
    indexed_writes: bool = False,
    runs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The four target ratios, from each tool's fastest configuration (median total).

    With ``indexed_writes`` (our target index exists while the vectors are written, so
    the server indexes each write) moving the vectors is held against the floor that
    writes into a live index too; the plain floor's ratio is listed as well.
    """
    best: dict[str, str] = {}
    for tool in TOOLS:
        rows = {k: v for k, v in table.items() if v["tool"] == tool and v["total_seconds"]}
        if rows:
            best[tool] = min(rows, key=lambda k: rows[k]["total_seconds"])
    out: dict[str, Any] = {"best": best}
    if len(best) < 2:
        out["note"] = "only one tool ran, or one had no successful run: no ratios"
        return out
    ours, peer = table[best["redismigrate"]], table[best["redisvl"]]
    peer_rows = [v for v in table.values() if v["tool"] == "redisvl" and v["downtime_seconds"]]
    peer_downtime = min(v["downtime_seconds"] for v in peer_rows)
    moving = ours["moving_seconds"] or 0.0
    same_conns = FLOORS[1] if ours["workers"] == 1 else FLOORS[2]
    if indexed_writes:
        moving_key = f"moving vectors (backup+reencode, writes indexed) / floor [{FLOORS[3]}]"
        moving_ratio = ratio(ours["moving_and_indexing_seconds"], floors.get(FLOORS[3]))
    else:
        moving_key = f"moving vectors (backup+reencode) / floor [{same_conns}]"
        moving_ratio = ratio(moving, floors.get(same_conns))
    out["ratios"] = {
        "total: ours / peer best": {
            "value": ratio(ours["total_seconds"], peer["total_seconds"]),
            "target": 0.35,
        },
        "downtime: ours / peer lowest": {
            "value": ratio(ours["downtime_seconds"], peer_downtime),
            "target": 0.5,
        },
        moving_key: {"value": moving_ratio, "target": 1.5},
        "validation share of our total": {
            "value": ratio(ours["steps"]["validate"], ours["total_seconds"]),
            "target": 0.10,
        },
    }
    drop = {k: v for k, v in table.items() if v["tool"] == DROP and v["total_seconds"]}
    if drop:
        label = min(drop, key=lambda k: drop[k]["total_seconds"])
        fastest = drop[label]
        out["drop_recreate"] = {
            "configuration": label,
            "total: ours / peer best": ratio(fastest["total_seconds"], peer["total_seconds"]),
            "downtime: ours / peer lowest": ratio(fastest["downtime_seconds"], peer_downtime),
            "total, per round": per_round_ratios(runs or [], "total_seconds", DROP),
            "downtime, per round": per_round_ratios(runs or [], "downtime_seconds", DROP),
        }
    out["also"] = {
        "apply wall: ours / peer best": ratio(
            ours["apply_wall_seconds"], peer["apply_wall_seconds"]
        ),
        "downtime: ours / peer best-total configuration": ratio(
            ours["downtime_seconds"], peer["downtime_seconds"]
        ),
        "moving vectors / floor [raw RESP, 1 connection]": ratio(moving, floors.get(FLOORS[1])),
        "moving vectors / floor [raw RESP, 4 connections]": ratio(moving, floors.get(FLOORS[2])),
        "our moving vectors seconds": round(moving, 3),
        "peer moving vectors seconds (enumerate+backup+reencode)": peer["moving_seconds"],
        "ours moving + indexing (backup+reencode+create+indexing) / floor into a live index": ratio(
            ours["moving_and_indexing_seconds"], floors.get(FLOORS[3])
        ),
        "peer moving + indexing / floor into a live index": ratio(
            peer["moving_and_indexing_seconds"], floors.get(FLOORS[3])
        ),
        "total, per round (ours best / peer best in the same round)": per_round_ratios(
            runs or [], "total_seconds"
        ),
        "downtime, per round (ours lowest / peer lowest in the same round)": per_round_ratios(
            runs or [], "downtime_seconds"
        ),
        "downtime: ours / downtime floor": ratio(ours["downtime_seconds"], floors.get(FLOORS[4])),
        "downtime: peer lowest / downtime floor": ratio(peer_downtime, floors.get(FLOORS[4])),
        "downtime: least possible ratio (downtime floor / peer lowest)": ratio(
            floors.get(FLOORS[4]), peer_downtime
        ),
        "server CPU s (all threads) during our apply": ours["server_cpu_seconds"],
        "server CPU s (all threads) during the peer's apply": peer["server_cpu_seconds"],
        "server CPU of our apply / peer best total": ratio(
            ours["server_cpu_seconds"], peer["total_seconds"]
        ),
        "server CPU of the live-index floor / peer best total": ratio(
            floors.get(SERVER_CPU + FLOORS[3]), peer["total_seconds"]
        ),
    }
    for item in out["ratios"].values():
        item["met"] = item["value"] is not None and item["value"] <= item["target"]
    return out


def add_baseline(
    head: dict[str, Any], table: dict[str, dict[str, Any]], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    found = baseline_headline(table, runs)
    if found:
        head["baseline"] = found
    return head


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def builds_while_writing(runs: list[dict[str, Any]]) -> bool:
    """Whether our report has the target created before the re-encoding (indexed as written)."""
    for r in runs:
        order = list(r.get("steps", {})) if r["tool"] == "redismigrate" and r.get("ok") else []
        if "create" in order and "reencode" in order:
            return order.index("create") < order.index("reencode")
    return False


def footer(result: dict[str, Any]) -> list[str]:
    """Notes on reading the figures, load averages seen and the failed runs."""
    lines: list[str] = []
    m = result["machine"]
    if builds_while_writing(result.get("runs", [])):
        lines += [
            "",
            "redismigrate created the target index before re-encoding, so the server indexes "
            "each vector as it is written: its `reencode` step includes that indexing work "
            "(the floor has no index) and its `indexing` step is only what is left after it.",
        ]
    loads = [r["loadavg_1m_before"] for r in result.get("runs", [])]
    if loads:
        lines += [
            "",
            f"1-minute load average before each run: {min(loads):.2f} to {max(loads):.2f} "
            f"({m['cores']} cores; other work on the machine is not controlled).",
        ]
    failures = [r for r in result.get("runs", []) if not r.get("ok")]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += [
            f"- {r['tool']} w={r['workers']} {r['mode']}: {r.get('error', '')[:300]}"
            for r in failures
        ]
    return lines


def render(result: dict[str, Any]) -> str:
    """The results as markdown (also what is printed)."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"Python {m['python']}, "
        f"Redis {m['redis_version']} (search {m['search_version']}, json {m['json_version']}); "
        f"redismigrate {m['redismigrate']} ({m['redismigrate_commit']}, "
        f"source sha256 {m['redismigrate_source_sha256']}), redisvl {m['redisvl']}.",
        "",
    ]
    if "memory_growth" in result:
        grow = result["memory_growth"]
        lines += ["Peak RSS of the apply process (MB), hash, FLAT, 128 dims:", ""]
        lines += markdown_table(
            [
                "configuration",
                *[f"{n:,} docs" for n in grow["sizes"]],
                "ratio",
                "total s (each size)",
            ],
            (
                [
                    label,
                    *row["peak_rss_mb"],
                    row["ratio"],
                    " / ".join(fmt(t) for t in row["total_seconds"]),
                ]
                for label, row in grow["by_config"].items()
            ),
        )
        return "\n".join([*lines, *footer(result)]) + "\n"
    c = result["config"]
    lines += [
        f"{c['docs']:,} documents x {c['dims']} dims, {c['storage']}, "
        f"{c['algorithm'].upper()} COSINE, float32 -> float16, batch {c['batch_size']}, "
        f"{c['rounds']} round(s); medians of successful runs.",
        "",
    ]
    lines += markdown_table(
        [
            "configuration",
            "ok/runs",
            "total s",
            "downtime s",
            "apply wall s",
            "server CPU s (main thread / all)",
            "peak RSS MB",
        ],
        (
            [
                label,
                f"{r['runs'] - r['failed']}/{r['runs']}",
                r["total_seconds"],
                r["downtime_seconds"],
                r["apply_wall_seconds"],
                f"{fmt(r.get('server_main_thread_cpu_seconds'))} / "
                f"{fmt(r.get('server_cpu_seconds'))}",
                r["peak_rss_mb"],
            ]
            for label, r in result["summary"].items()
        ),
    )
    lines += [
        "",
        "Seconds per step (medians; `other` = reported total minus the listed steps):",
        "",
    ]
    lines += markdown_table(
        ["configuration", *STEPS, "other"],
        (
            [label, *[r["steps"].get(s) for s in (*STEPS, "other")]]
            for label, r in result["summary"].items()
        ),
    )
    if result.get("floor"):
        lines += [
            "",
            "Floor: read every vector once, write it back as float16, nothing else (the "
            "fourth into a FLOAT16 index created with SKIPINITIALSCAN, which indexes each "
            "write); the downtime floor only writes float16 vectors packed beforehand into "
            "such an index, until it is complete:",
            "",
        ]
        med = result["floor"]["median"]
        lines += markdown_table(
            ["floor", "median s", "server CPU s"],
            (
                [name, seconds, med.get(SERVER_CPU + name)]
                for name, seconds in med.items()
                if not name.startswith(SERVER_CPU)
            ),
        )
    head = result["headline"]
    if "ratios" in head:
        lines += [
            "",
            f"Best configurations: {head['best']['redismigrate']} vs {head['best']['redisvl']}.",
            "",
        ]
        lines += markdown_table(
            ["ratio", "measured", "target", "met"],
            (
                [
                    k,
                    fmt(v["value"], 3),
                    f"<= {v['target']}",
                    {True: "yes", False: "no"}[v["met"]] if v["value"] is not None else "-",
                ]
                for k, v in head["ratios"].items()
            ),
        )
        if head.get("drop_recreate"):
            d = head["drop_recreate"]
            lines += [
                "",
                "Our default for hash re-encoding is the online mode (zero downtime, a longer "
                "run). Beside it, redismigrate planned with `--mode drop_recreate`:",
                "",
                *[f"- {k}: {fmt(v, 3)}" for k, v in d.items()],
            ]
        lines += ["", *[f"- {k}: {fmt(v, 3)}" for k, v in head["also"].items()]]
    elif head.get("note"):
        lines += ["", head["note"]]
    if head.get("baseline"):
        base = head["baseline"]
        lines += [
            "",
            f"Against redismigrate at {base['commit']} in the same rounds (1 worker, the "
            "default; ratios of ours to it):",
            "",
        ]
        lines += markdown_table(
            ["figure", "ours s", "baseline s", "ratio of medians", "per round", "target", "met"],
            (
                [
                    name.replace("_seconds", ""),
                    v["ours"],
                    v["baseline"],
                    fmt(v["ratio of medians"], 3),
                    ", ".join(fmt(x, 3) for x in v["per round"]),
                    f"<= {v['target']}",
                    "yes" if v["met"] else "no",
                ]
                for name, v in base.items()
                if isinstance(v, dict)
            ),
        )
    lines += footer(result)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- machine


def machine(client: redis.Redis) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    modules: dict[str, Any] = {}
    for entry in client.execute_command("MODULE", "LIST"):  # RESP2: [name, N, ver, N, ...]
        pairs = dict(zip(entry[::2], entry[1::2], strict=True))
        modules[pairs[b"name"].decode()] = pairs[b"ver"]

    def version(name: str) -> str:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
        return "not installed"

    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        git = ["git", "-C", str(here)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "../redismigrate"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        commit = head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_version": client.info("server")["redis_version"],
        "search_version": modules.get("search"),
        "json_version": modules.get("ReJSON"),
        "redismigrate": version("redismigrate"),
        "redismigrate_commit": commit,
        "redisvl": version("redisvl"),
    }


# --------------------------------------------------------------------------- main


def progress(record: dict[str, Any]) -> None:
    if record.get("ok"):
        print(
            f"  {record['tool']:>12} w={record['workers']} {record['mode']}: total "
            f"{record['total_seconds']:.2f} s, downtime {record['downtime_seconds']:.2f} s, "
            f"wall {record['apply_wall_seconds']:.2f} s, peak {record['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    else:
        print(f"  {record['tool']:>12} w={record['workers']} {record['mode']}: FAILED "
              f"{record.get('error', '')[:500]}", flush=True)  # fmt: skip


def all_configs(
    workers: Sequence[int], modes: Sequence[str], tools: Sequence[str], baseline: bool
) -> list[Config]:
    """Every configuration run; the baseline only at default settings (1 worker, sync)."""
    configs = [Config(t, w, m) for w in workers for m in modes for t in tools]
    if baseline:
        configs.append(Config(BASELINE, 1, "sync"))
        configs.sort(key=lambda c: (c.workers, c.mode))
    return configs


def compare(
    args: argparse.Namespace, client: redis.Redis, url: str, scratch: Path
) -> dict[str, Any]:
    data = Dataset(args.docs, args.dims, args.storage, args.algorithm)
    configs = all_configs(args.workers, args.modes, args.tools, args.baseline is not None)
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, float]] = []
    groups: dict[tuple[int, str], list[Config]] = {}
    for config in configs:
        groups.setdefault((config.workers, config.mode), []).append(config)
    for round_no in range(args.rounds):
        print(f"round {round_no + 1}/{args.rounds}", flush=True)
        for group in groups.values():
            turn = round_no % len(group)  # who goes first rotates
            for config in group[turn:] + group[:turn]:
                record = migrate_once(config, client, url, data, args.batch_size, scratch)
                record["round"] = round_no + 1
                runs.append(record)
                progress(record)
        if data.storage == "hash" and not args.no_floor:
            floors.append(floor_once(client, data))
            print(
                "  floor: " + ", ".join(f"{k} {v:.2f} s" for k, v in floors[-1].items()), flush=True
            )
    table = summarize(runs, configs)
    floor_median = {name: median(f[name] for f in floors) for name in floors[0]} if floors else {}
    return {
        "config": {
            "docs": args.docs,
            "dims": args.dims,
            "storage": args.storage,
            "algorithm": args.algorithm,
            "rounds": args.rounds,
            "workers": args.workers,
            "modes": args.modes,
            "tools": args.tools,
            "baseline": _SNAPSHOT.get("baseline_commit"),
            "batch_size": args.batch_size,
        },
        "runs": runs,
        "floor": {"runs": floors, "median": floor_median} if floors else None,
        "summary": table,
        "headline": add_baseline(
            headline(table, floor_median, builds_while_writing(runs), runs), table, runs
        ),
    }


def memory_growth(
    args: argparse.Namespace, client: redis.Redis, url: str, scratch: Path
) -> dict[str, Any]:
    sizes = [100_000, 1_000_000]
    configs = [Config(t, w, m) for w in args.workers for m in args.modes for t in args.tools]
    runs: list[dict[str, Any]] = []
    for size in sizes:
        print(f"{size:,} documents x 128 dims", flush=True)
        data = Dataset(size, 128, "hash", "flat")
        for config in configs:
            record = migrate_once(config, client, url, data, args.batch_size, scratch)
            record["docs"] = size
            runs.append(record)
            progress(record)
    by_config: dict[str, Any] = {}
    for config in configs:
        per = [
            next((r for r in of(runs, config) if r["docs"] == n and r.get("ok")), None)
            for n in sizes
        ]
        rss = [r["peak_rss_mb"] if r else None for r in per]
        by_config[config.label] = {
            "peak_rss_mb": rss,
            "total_seconds": [r["total_seconds"] if r else None for r in per],
            "ratio": ratio(rss[1], rss[0]),
            "target": 1.25 if config.tool == "redismigrate" else None,
        }
    return {"memory_growth": {"sizes": sizes, "by_config": by_config}, "runs": runs}


def rerender(path: Path, write_docs: bool) -> None:
    """Summarize an earlier result file again (e.g. after the summary code changed)."""
    result = json.loads(path.read_text())
    if "summary" in result:
        c = result["config"]
        if c.get("baseline"):
            _SNAPSHOT["baseline_commit"] = c["baseline"]
        configs = all_configs(
            c["workers"], c["modes"], c.get("tools", TOOLS), bool(c.get("baseline"))
        )
        result["summary"] = summarize(result["runs"], configs)
        floors = result["floor"]["median"] if result.get("floor") else {}
        result["headline"] = add_baseline(
            headline(
                result["summary"], floors, builds_while_writing(result["runs"]), result["runs"]
            ),
            result["summary"],
            result["runs"],
        )
    text = render(result)
    print(text)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if write_docs:
        path.with_suffix(".md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--storage", default="hash", choices=["hash", "json"])
    parser.add_argument("--algorithm", default="flat", choices=["flat", "hnsw"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 4])
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=["sync"], help="sync and/or async apply"
    )
    parser.add_argument(
        "--tools",
        type=lambda s: s.split(","),
        default=list(RUNNABLE),
        help=f"which tools to run, of {', '.join(RUNNABLE)} (default all; without both "
        "redismigrate and redisvl there are no ratios)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REF",
        help="also run redismigrate at this git commit (1 worker) in the same rounds",
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--memory-growth", action="store_true", help="peak RSS at 100K and 1M docs")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor measurements")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-docs", action="store_true", help="also write the markdown (.md)")
    parser.add_argument(
        "--rerender",
        type=Path,
        default=None,
        help="recompute the summary of an earlier result JSON and print it (no runs)",
    )
    args = parser.parse_args()
    if args.rerender is not None:
        rerender(args.rerender, args.write_docs)
        return
    if any(m not in ("sync", "async") for m in args.modes):
        parser.error("--modes takes sync and/or async")
    if not args.tools or any(t not in RUNNABLE for t in args.tools):
        parser.error(f"--tools takes {', '.join(RUNNABLE)}")
    if args.storage != "hash" and DROP in args.tools:
        args.tools.remove(DROP)  # JSON vectors are not rewritten: one mode only
    default = "compare-memory.json" if args.memory_growth else "compare.json"
    out: Path = args.out or Path("benchmarks/results") / default
    if "redisvl" in args.tools:
        rvl_command()  # fail early when RedisVL is missing

    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="compare-") as scratch:
        assert server.info is not None
        url = server.info.url
        client = redis.Redis(host=server.info.host, port=server.info.port, protocol=2)
        result: dict[str, Any] = {"machine": machine(client)}
        result["machine"]["redismigrate_source_sha256"] = snapshot_package(Path(scratch))
        if args.baseline is not None:
            snapshot_baseline(Path(scratch), args.baseline)
        if args.memory_growth:
            result.update(memory_growth(args, client, url, Path(scratch)))
        else:
            result.update(compare(args, client, url, Path(scratch)))
        client.close()

    text = render(result)
    print()
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written to {out}")
    if args.write_docs:
        out.with_suffix(".md").write_text(text)
        print(f"written to {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
