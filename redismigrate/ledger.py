"""Run locks and the migration ledger, as data: who holds a lock, what each run did.

Pure code, no I/O. A lock's value in Redis is a :class:`LockHolder` as JSON; the
ledger is a stream of :class:`LedgerEvent` (one ``started`` and one ``finished`` per
run, or a lone ``finished`` for a refused run); :func:`merge_events` folds them into
one :class:`LedgerEntry` per run.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeAlias

import msgspec

from redismigrate.plan import MigrationPlan, now_iso
from redismigrate.schema import (
    MAYBE_UNREPORTED,
    IndexSchema,
    Model,
    UnreportedAttribute,
    VectorField,
)

LOCK_PREFIX = "redismigrate:lock:"
LEDGER_KEY = "redismigrate:ledger"
LEDGER_MAXLEN = 10_000
DIRECTORY_LOCK_FILE = ".redismigrate.lock"
TAKEOVER = "took over the lock"  # how a takeover warning starts

Result: TypeAlias = Literal["succeeded", "failed", "rolled_back", "refused"]
Status: TypeAlias = Literal[
    "succeeded", "failed", "rolled_back", "refused", "running", "unfinished"
]


def lock_key(index_name: str) -> str:
    """The lock key of an index; the braces are a cluster hash tag."""
    return f"{LOCK_PREFIX}{{{index_name}}}"


@cache
def machine_id() -> str | None:
    """Identifies this host and PID namespace (where a pid means the same process), or None
    where that cannot be told (not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    seed = f"{socket.gethostname()}\0{boot}\0{namespace}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


class LockHolder(Model, frozen=True, kw_only=True, tag_field="version", tag=1):
    """Who holds a lock: stored as the lock's value, and in the backup directory's lock file."""

    token: str
    run_id: str
    host: str
    pid: int
    started_at: str
    command: str
    machine: str | None = None

    @classmethod
    def here(cls, command: str, run_id: str | None = None) -> LockHolder:
        return cls(
            token=uuid.uuid4().hex,
            run_id=run_id or uuid.uuid4().hex[:16],
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=now_iso(),
            command=command,
            machine=machine_id(),
        )

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, raw: bytes | str | None) -> LockHolder | None:
        """The holder in a lock value; None when empty or not ours."""
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError:
            return None

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {self.started_at} ({self.command})"

    def on_this_machine(self) -> bool:
        """True when this holder's pid can be checked here (same host, same pid namespace)."""
        return self.machine is not None and self.machine == machine_id()

    def is_dead(self) -> bool:
        """True only when this holder provably no longer runs (its process is gone)."""
        return self.on_this_machine() and self.pid != os.getpid() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(holder: LockHolder | None) -> str:
    return holder.describe() if holder is not None else "an unknown holder"


class LedgerEvent(Model, frozen=True, kw_only=True, tag_field="version", tag=1):
    """One record in the ledger stream."""

    event: Literal["started", "finished"]
    run_id: str
    command: str
    index_name: str
    at: str
    host: str
    pid: int
    target_index: str | None = None
    plan_hash: str | None = None
    backup_dir: str | None = None
    result: Result | None = None
    error: str | None = None
    took_over: str | None = None
    # the vector parameters a server may not report (schema.MAYBE_UNREPORTED), as the
    # run's plan has them: of the source index, and of the target it creates
    source_params: dict[str, dict[str, Any]] = {}
    target_params: dict[str, dict[str, Any]] = {}

    def encode(self) -> bytes:
        return msgspec.json.encode(self)


class LedgerEntry(Model, frozen=True, kw_only=True, tag_field="version", tag=1):
    """One run as ``history`` shows it. ``status`` is ``running`` while its lock is held,
    ``unfinished`` when it started and never finished (it crashed or was killed)."""

    run_id: str
    command: str
    index_name: str
    status: Status
    started_at: str
    finished_at: str | None = None
    host: str
    pid: int
    target_index: str | None = None
    plan_hash: str | None = None
    backup_dir: str | None = None
    error: str | None = None
    took_over: str | None = None
    source_params: dict[str, dict[str, Any]] = {}
    target_params: dict[str, dict[str, Any]] = {}


def decode_event(raw: bytes | str) -> LedgerEvent | None:
    """An event from the stream; None for a record this version cannot read."""
    try:
        return msgspec.json.decode(raw, type=LedgerEvent)
    except msgspec.DecodeError:
        return None


def merge_events(events: Iterable[LedgerEvent], running: Iterable[str] = ()) -> list[LedgerEntry]:
    """One entry per run, in the order the runs started (events in stream order).

    ``running`` holds the run ids whose lock is still held.
    """
    live = set(running)
    started: dict[str, LedgerEvent] = {}
    finished: dict[str, LedgerEvent] = {}
    order: list[str] = []
    for event in events:
        if event.run_id not in started and event.run_id not in finished:
            order.append(event.run_id)
        (started if event.event == "started" else finished)[event.run_id] = event
    entries = []
    for run_id in order:
        first = started.get(run_id) or finished[run_id]
        last = finished.get(run_id)
        status: Status
        if last is not None and last.result is not None:
            status = last.result
        else:
            status = "running" if run_id in live else "unfinished"
        entries.append(
            LedgerEntry(
                run_id=run_id,
                command=first.command,
                index_name=first.index_name,
                status=status,
                started_at=first.at,
                finished_at=last.at if last is not None else None,
                host=first.host,
                pid=first.pid,
                target_index=first.target_index,
                plan_hash=first.plan_hash,
                backup_dir=first.backup_dir,
                error=last.error if last is not None else None,
                took_over=first.took_over or (last.took_over if last is not None else None),
                source_params=first.source_params,
                target_params=first.target_params,
            )
        )
    return entries


# --------------------------------------------------------------------------- recorded values


_IDENTITY = ("algorithm", "dims", "datatype", "distance_metric")
# the commands whose runs build a plan's target (a batch's runs carry the batch's command)
_APPLY_COMMANDS = ("apply", "batch-apply", "batch-resume")


def unreportable_params(schema: IndexSchema) -> dict[str, dict[str, Any]]:
    """``{field: {parameter: value}}`` of the vector parameters a server may not report,
    as ``schema`` sets them (defaults filled in), with what identifies the field's index
    (algorithm, dims, datatype, distance metric)."""
    out: dict[str, dict[str, Any]] = {}
    for field in schema.canonical().vector_fields:
        names = MAYBE_UNREPORTED.get(field.attrs.algorithm, ())
        values = {n: getattr(field.attrs, n) for n in names if getattr(field.attrs, n) is not None}
        if values:
            out[field.name] = {**{k: getattr(field.attrs, k) for k in _IDENTITY}, **values}
    return out


def _leaves_live(entry: LedgerEntry, index_name: str) -> Literal["source", "target"] | None:
    """Which of its plan's schemas a run left live under ``index_name``, if any."""
    target = entry.target_index or entry.index_name
    if entry.command in _APPLY_COMMANDS and entry.status == "succeeded":
        return "target" if target == index_name else None
    restored = entry.status == "rolled_back" or (
        entry.command == "rollback" and entry.status == "succeeded"
    )
    if restored and entry.index_name == index_name:
        return "source"
    return None


def recall_recorded(
    entries: list[LedgerEntry],
    index_name: str,
    live: IndexSchema,
    unreported: list[UnreportedAttribute],
    load_plan: Callable[[LedgerEntry], MigrationPlan | None],
) -> list[UnreportedAttribute]:
    """``unreported`` with the values the newest run that made ``index_name`` recorded.

    ``entries`` are the ledger's runs, newest first. The newest run that ended with
    ``index_name`` live (an apply that created it, a rollback or undo that put it back)
    decides; a newer successful run that moved the name elsewhere means the index was
    made since by something else, and nothing is recalled. Values come from the run's
    ledger record, else from its plan (``load_plan``: the copy kept beside its backup).
    A field whose algorithm, dims, datatype or metric differ from the live one's is not
    recalled (the index was made again since).
    """
    if all(u.recorded is not None for u in unreported):
        return list(unreported)
    for entry in entries:
        if index_name not in (entry.index_name, entry.target_index):
            continue
        if entry.status not in ("succeeded", "rolled_back"):
            continue
        side = _leaves_live(entry, index_name)
        if side is None:
            return list(unreported)  # the name went to another index after this run
        params = entry.target_params if side == "target" else entry.source_params
        if not params:
            plan = load_plan(entry)
            if plan is not None:
                made = plan.merged_target_schema if side == "target" else None
                params = unreportable_params(made or plan.source.schema_snapshot)
        by = f"{entry.command} run {entry.run_id} at {entry.finished_at or entry.started_at}"
        out: list[UnreportedAttribute] = []
        for item in unreported:
            found = params.get(item.field, {})
            field = live.field(item.field)
            value = found.get(item.attribute)
            if (
                item.recorded is None
                and value is not None
                and isinstance(field, VectorField)
                and all(found.get(k) == getattr(field.attrs, k) for k in _IDENTITY)
            ):
                item = msgspec.structs.replace(item, recorded=value, recorded_by=by)
            out.append(item)
        return out
    return list(unreported)
