"""The state one apply run carries through its steps: the backup set, counters, timings,
progress, and the test hook that kills the process at a named point."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.cluster import ClusterConnections
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.throttle import Throttle
from redismigrate.backup import (
    BackupBatch,
    BackupHeader,
    VectorBackup,
    backup_paths,
    read_manifest,
)
from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.keytext import key_text
from redismigrate.plan import MigrationPlan, now_iso
from redismigrate.preflight import Preflight
from redismigrate.report import MALFORMED_KEYS_LISTED, ConcurrentWrites, StepTiming

ProgressCallback = Callable[[str, int, int | None], None]
CRASH_ENV = "REDISMIGRATE_CRASH_AT"


def crash_point(name: str) -> None:
    """Test hook: ``REDISMIGRATE_CRASH_AT=name[:n]`` SIGKILLs this process at that point."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    remaining = int(count or "1") - 1
    if remaining > 0:
        os.environ[CRASH_ENV] = f"{point}:{remaining}"
        return
    os.kill(os.getpid(), signal.SIGKILL)


class BackupSet:
    """A migration's progress header and its vector data: in the header's own data file,
    or (multi-worker runs) in one shard per worker listed by a manifest."""

    def __init__(self, main: VectorBackup, shards: list[VectorBackup]) -> None:
        self.main = main
        self.shards = shards

    @property
    def header(self) -> BackupHeader:
        return self.main.header

    @property
    def data_sources(self) -> list[VectorBackup]:
        return self.shards or [self.main]

    @property
    def keys_backed_up(self) -> int:
        return sum(b.header.keys_backed_up for b in self.data_sources)

    def iter_frames(self) -> Iterator[BackupBatch]:
        for source in self.data_sources:
            yield from source.iter_frames()

    def iter_batches(self) -> Iterator[tuple[list[bytes], dict[bytes, dict[str, bytes]]]]:
        for source in self.data_sources:
            yield from source.iter_batches()

    def files(self) -> list[Path]:
        paths = [self.main.header_path, self.main.data_path]
        for shard in self.shards:
            paths += [shard.header_path, shard.data_path]
        manifest = backup_paths(self.main.header_path.parent, self.header.index_name).manifest
        return [p for p in [*paths, Path(manifest)] if p.exists()]

    def close(self) -> None:
        for backup in [self.main, *self.shards]:
            backup.close()

    @classmethod
    def open(cls, backup_dir: Path, index_name: str) -> BackupSet | None:
        main = VectorBackup.open(backup_dir, index_name)
        if main is None:
            return None
        manifest_path = Path(backup_paths(backup_dir, index_name).manifest)
        shards: list[VectorBackup] = []
        if manifest_path.exists():
            for shard in read_manifest(manifest_path).shards:
                opened = VectorBackup.open(backup_dir, index_name, worker=shard.worker)
                if opened is None:
                    raise BadInputError(
                        f"backup shard {shard.header!r} listed in {manifest_path} is missing"
                    )
                shards.append(opened)
        return cls(main, shards)


def first_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from a task group: not the
    closed-stream errors the other tasks of a pipeline meet once one of them failed."""
    leaves: list[BaseException] = []

    def walk(node: BaseException) -> None:
        inner = getattr(node, "exceptions", None)
        if isinstance(inner, (list, tuple)) and inner:
            for child in inner:
                walk(child)
        else:
            leaves.append(node)

    walk(exc)
    plumbing = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
    for leaf in leaves:
        if not isinstance(leaf, plumbing):
            return leaf
    return leaves[0]


class EncodedBatch(msgspec.Struct, frozen=True):
    """One backup frame ready to write: per field, the bytes each key must still hold
    (its backed-up original) and what it gets instead (None: nothing to write)."""

    batch: int
    keys: list[bytes]  # names after the prefix move
    fields: list[bytes]
    expected: list[list[Any]]
    encoded: list[list[bytes | None]]
    count: int
    malformed: list[bytes] = []  # keys whose vector has another byte length: left as is


class Run:
    """State of one apply run: timings, counters, the backup, the progress callback."""

    def __init__(
        self,
        plan: MigrationPlan,
        client: aioredis.Redis,
        backup_dir: Path,
        batch_size: int,
        workers: int,
        progress: ProgressCallback | None,
        *,
        throttle: Throttle | None = None,
    ) -> None:
        self.plan = plan
        self.client = client
        self.backup_dir = backup_dir
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.timings: list[StepTiming] = []
        # steps reporting progress: their last (done, total)
        self.ticking: dict[str, tuple[int, int | None]] = {}
        self.backup: VectorBackup | None = None  # the progress header
        self.backups: BackupSet | None = None
        self.wire = Wire(client)
        self.started = time.perf_counter()
        self.started_at = now_iso()
        self.dropped_at: float | None = None
        self.ready_at: float | None = None
        self.resumed = False
        self.keys_renamed = 0
        self.fields_renamed = 0
        self.reencoded = 0
        self.documents = 0
        self.size_before = plan.source.stats_snapshot.total_mb
        self.capture: ChangeCapture | None = None
        self.skipped: set[bytes] = set()  # keys a guarded write left: the application's
        # keys a sweep found in the old encoding (written while no capture watched)
        self.found_by_sweep: set[bytes] = set()
        self.concurrent: ConcurrentWrites | None = None
        self.preflight: Preflight | None = None
        # INFO memory's used_memory and used_memory_dataset when the run started
        self.memory_before: tuple[int, int] | None = None
        # set by a watcher (an eviction): the run's next step raises it
        self.halt: RedisMigrateError | None = None
        self.evictions_at_start: int | None = None
        self.malformed = 0  # vectors of another byte length than their field's
        self.malformed_keys: list[str] = []
        # what writes while the index serves waits on: admit(n) before writing n documents
        self.throttle = throttle or Throttle(client, plan.source.index_name)
        # a cluster's primaries (keys go to each; FT.* to ``client``, the pinned one)
        self.cluster: ClusterConnections | None = None

    @property
    def servers(self) -> aioredis.Redis | ClusterConnections:
        """Where the documents live: the server, or every primary of the cluster."""
        return self.cluster if self.cluster is not None else self.client

    def note_malformed(self, keys: list[bytes]) -> None:
        self.malformed += len(keys)
        room = MALFORMED_KEYS_LISTED - len(self.malformed_keys)
        self.malformed_keys += [key_text(k) for k in keys[:room]]

    def check_halt(self) -> None:
        """Raise what stopped the run, if anything did."""
        if self.halt is not None:
            raise self.halt

    def tick(self, step: str, done: int, total: int | None = None) -> None:
        """Report a step's progress: as it starts (``done`` 0), then per batch or poll."""
        self.check_halt()
        self.ticking[step] = (done, total)
        if self.progress is not None:
            self.progress(step, done, total)

    def timed(self, step: str, started: float, items: int = 0) -> None:
        """Record a step's time since ``started`` and the ``items`` it handled; a step
        timed again (the index built twice) is one entry: times added, the larger count.
        A step that reported progress ends with a call ``done == total`` (made here when
        its last report was not one)."""
        seconds = time.perf_counter() - started
        for position, earlier in enumerate(self.timings):
            if earlier.step == step:
                self.timings[position] = StepTiming(
                    step=step,
                    seconds=round(earlier.seconds + seconds, 4),
                    items=max(earlier.items, items),
                )
                break
        else:
            self.timings.append(StepTiming(step=step, seconds=round(seconds, 4), items=items))
        last = self.ticking.pop(step, None)
        if last is not None and self.progress is not None:
            final = max(last[0], items)
            if last != (final, final):
                self.progress(step, final, final)

    @property
    def header(self) -> BackupHeader:
        assert self.backup is not None
        return self.backup.header

    def set_phase(self, phase: str, **counters: Any) -> None:
        assert self.backup is not None
        self.backup.update(phase=phase, **counters)
