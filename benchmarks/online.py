"""Online re-encoding (zero downtime) side by side with drop_recreate and RedisVL.

    python benchmarks/online.py [--docs 100000] [--dims 768] [--rounds 3]
        [--out benchmarks/results/online.json]

The data set and the checks are benchmarks/compare.py's (hash documents, FLAT COSINE,
float32 -> float16; every migration verified afterwards). Each round reloads the data
before each of three runs, in a rotating order, each at default settings:

* ``redismigrate online``: plan ``--mode online`` (the ``finish`` variant: shadow
  fields, first switch, in-place rewrite, final index, second switch, shadows removed),
  apply ``--no-wait-for-writes`` (no application writes here to wait for);
* ``redismigrate drop_recreate``: plan and apply as a user does by default;
* ``redisvl``: ``rvl migrate plan`` / ``apply`` (RedisVL 0.28, its defaults).

A query loop (a `*` count and a KNN query every 100 ms) runs through every apply and
counts failed queries and half-built answers. The server's ``used_memory`` is sampled
every 20 ms during the apply: its peak above the level before the run is what the
migration added at its peak; the level after it, what the end freed (negative) or kept.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import compare  # the shared harness, beside this file
import numpy as np
import redis

from redismigrate.server import EmbeddedRedis

RUNS = ("redismigrate online", "redismigrate drop_recreate", "redisvl")


class Watcher(threading.Thread):
    """Samples used_memory and runs a KNN query loop until stopped."""

    def __init__(self, host: str, port: int, dims: int, docs: int) -> None:
        super().__init__(daemon=True)
        self.docs = docs
        self.incomplete = 0  # `*` answered with fewer than every document
        self.client = redis.Redis(host=host, port=port, protocol=2)
        self.probe = np.random.default_rng(3).standard_normal(dims).astype(np.float32)
        self.done = threading.Event()
        self.peak = 0
        self.queries = 0
        self.failed = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        encoding: Any = np.float32
        next_sample = 0.0
        while not self.done.is_set():
            now = time.monotonic()
            if now >= next_sample:
                used = int(self.client.info("memory")["used_memory"])
                self.peak = max(self.peak, used)
                next_sample = now + 0.02
            try:
                count = self.client.execute_command(
                    "FT.SEARCH", compare.INDEX, "*", "LIMIT", "0", "0"
                )
                if int(count[0]) < self.docs:
                    self.incomplete += 1
            except redis.RedisError as exc:
                self._fail(exc)
            started = time.perf_counter()
            try:
                self.queries += 1
                self._knn(encoding)
            except redis.ResponseError as exc:
                if "blob size" in str(exc) or "Error parsing vector" in str(exc):
                    encoding = np.float16 if encoding is np.float32 else np.float32
                    try:
                        self._knn(encoding)
                    except redis.RedisError as again:
                        self._fail(again)
                else:
                    self._fail(exc)
            except redis.RedisError as exc:
                self._fail(exc)
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.1)
        self.client.close()

    def _knn(self, encoding: Any) -> None:
        reply = self.client.execute_command(
            "FT.SEARCH", compare.INDEX, "*=>[KNN 5 @embedding $v]", "PARAMS", "2", "v",
            self.probe.astype(encoding).tobytes(), "NOCONTENT", "DIALECT", "2",
        )  # fmt: skip
        if int(reply[0]) != 5:
            raise redis.ResponseError(f"KNN found {reply[0]} documents, not 5")

    def _fail(self, exc: Exception) -> None:
        self.failed += 1
        if len(self.errors) < 3:
            self.errors.append(str(exc)[:200])


def one_run(
    which: str, client: redis.Redis, url: str, data: compare.Dataset, scratch: Path
) -> dict[str, Any]:
    host, port = compare.address(client)
    record: dict[str, Any] = {"run": which, "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    record.update(compare.fresh(client, host, port, data, index=True))
    before = compare.read_samples(client, data)
    tool = "redisvl" if which == "redisvl" else "redismigrate"
    config = compare.Config(tool, 1, "sync")
    work = Path(tempfile.mkdtemp(prefix=which.replace(" ", "-") + "-", dir=scratch))
    patch = work / "patch.yaml"
    patch.write_text(compare.PATCH)
    plan = work / "plan.yaml"
    env = compare.tool_env(tool)
    command = compare.plan_command(tool, url, patch, plan)
    if which == "redismigrate online":
        command += ["--mode", "online"]
    planned = compare.run_measured(command, work / "plan.log", env)
    if planned.returncode != 0:
        record.update(ok=False, error=f"plan exit {planned.returncode}: {planned.output[-1500:]}")
        return record
    apply = compare.apply_command(config, url, plan, work, 500)
    apply = [a for a in apply if a not in ("--workers", "1", "--batch-size", "500")]
    if which == "redismigrate online":
        apply += ["--no-wait-for-writes"]
    used_before = int(client.info("memory")["used_memory"])
    watcher = Watcher(host, port, data.dims, data.docs)
    watcher.start()
    applied = compare.run_measured(apply, work / "apply.log", env)
    watcher.done.set()
    watcher.join()
    used_after = int(client.info("memory")["used_memory"])
    record.update(
        apply_wall_seconds=round(applied.wall, 3),
        peak_rss_mb=round(applied.peak_rss_mb, 1),
        server_peak_growth_mb=round((max(watcher.peak, used_after) - used_before) / 2**20, 1),
        server_change_mb=round((used_after - used_before) / 2**20, 1),
        queries=watcher.queries,
        failed_queries=watcher.failed,
        incomplete_answers=watcher.incomplete,
        query_errors=watcher.errors,
        query_p99_ms=round(1000 * float(np.percentile(watcher.latencies, 99)), 2)
        if watcher.latencies
        else None,
    )
    if applied.returncode != 0:
        record.update(ok=False, error=f"apply exit {applied.returncode}: {applied.output[-2000:]}")
        return record
    record.update(compare.read_report(tool, work, applied.output))
    record["verify"] = compare.verify(client, data, before)
    record["ok"] = bool(record["verify"]["ok"]) and record.get("result") == "succeeded"
    return record


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"Python {m['python']}, Redis {m['redis_version']} (search {m['search_version']}); "
        f"redismigrate {m['redismigrate']} ({m['redismigrate_commit']}, source sha256 "
        f"{m['redismigrate_source_sha256']}), redisvl {m['redisvl']}."
    )


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['machine_line']}",
        "",
        f"{result['docs']:,} documents x {result['dims']} dims, hash, FLAT COSINE, float32 -> "
        f"float16, {result['rounds']} round(s), each tool at its defaults; medians (spread).",
        "",
        "| run | ok/runs | downtime s | total s | apply wall s | server memory at the peak "
        "MB | server memory after MB | client peak RSS MB | queries failed / run | "
        "half-built answers / run | KNN p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for which in RUNS:
        rows = [r for r in result["runs"] if r["run"] == which]
        good = [r for r in rows if r.get("ok")]

        def cell(field: str, rows: list[dict[str, Any]] = good) -> str:
            values = [r[field] for r in rows if r.get(field) is not None]
            if not values:
                return "-"
            mid = statistics.median(values)
            return f"{mid:,.2f} ({min(values):,.2f}-{max(values):,.2f})"

        lines.append(
            f"| {which} | {len(good)}/{len(rows)} | {cell('downtime_seconds')} | "
            f"{cell('total_seconds')} | {cell('apply_wall_seconds')} | "
            f"{cell('server_peak_growth_mb')} | {cell('server_change_mb')} | "
            f"{cell('peak_rss_mb')} | {cell('failed_queries', rows)} | "
            f"{cell('incomplete_answers', rows)} | {cell('query_p99_ms')} |"
        )
    failures = [r for r in result["runs"] if not r.get("ok")]
    for r in failures:
        lines.append(f"- {r['run']} round {r.get('round')}: {r.get('error', r.get('verify'))}")
    lines.append("")
    lines.append(
        "Server memory at the peak: the most used_memory rose above its level before the "
        "apply; after: its level once the apply ended (negative: the end freed more than "
        "the run added). Queries, every 100 ms through the index name: a `*` count (a "
        "half-built answer: fewer than every document) and a KNN query (failed: an error, "
        "or fewer than 5 hits; re-sent in the other encoding once when the server says "
        "the blob size is wrong)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/online.json"))
    args = parser.parse_args()
    compare.rvl_command()
    data = compare.Dataset(args.docs, args.dims, "hash", "flat")
    runs: list[dict[str, Any]] = []
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory(prefix="online-") as scratch:
        assert server.info is not None
        url = server.info.url
        client = redis.Redis(host=server.info.host, port=server.info.port, protocol=2)
        machine = compare.machine(client)
        machine["redismigrate_source_sha256"] = compare.snapshot_package(Path(scratch))
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", flush=True)
            turn = number % len(RUNS)
            for which in RUNS[turn:] + RUNS[:turn]:
                record = one_run(which, client, url, data, Path(scratch))
                record["round"] = number + 1
                runs.append(record)
                print(
                    f"  {which}: ok={record.get('ok')} downtime "
                    f"{record.get('downtime_seconds')} total {record.get('total_seconds')} "
                    f"peak +{record.get('server_peak_growth_mb')} MB, failed queries "
                    f"{record.get('failed_queries')}",
                    flush=True,
                )
        client.close()
    result = {
        "machine": machine,
        "machine_line": machine_line(machine),
        "docs": args.docs,
        "dims": args.dims,
        "rounds": args.rounds,
        "runs": runs,
    }
    text = render(result)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(f"written to {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
