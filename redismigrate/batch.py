"""Batch migrations: one patch across many indexes. Pure code (models and checks)."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec

from redismigrate.errors import BadInputError
from redismigrate.files import ReviewableFile, convert_document
from redismigrate.patch import SchemaPatch
from redismigrate.plan import now_iso, prefixes_overlap
from redismigrate.schema import Model

BATCH_FORMAT_VERSION = 1
FailurePolicy = Literal["fail_fast", "continue_on_error"]
IndexStatus = Literal["pending", "in_progress", "succeeded", "failed", "skipped"]


class BatchIndexEntry(Model, frozen=True, kw_only=True):
    name: str
    applicable: bool
    skip_reason: str | None = None
    plan_path: str | None = None  # relative to the batch plan file
    plan_sha256: str | None = None
    prefixes: list[str] = []
    lossy: bool = False


class BatchPlan(Model, ReviewableFile, frozen=True, kw_only=True):
    """Which indexes a shared patch applies to, each with its own reviewed plan file."""

    file_kind: ClassVar[str] = "batch plan"

    version: int = BATCH_FORMAT_VERSION
    batch_id: str
    # asked of every index's plan (online, drop_recreate), or per_index: each plan chose
    mode: str = "drop_recreate"
    failure_policy: FailurePolicy = "fail_fast"
    requires_quantization: bool = False
    shared_patch: SchemaPatch
    indexes: list[BatchIndexEntry]
    created_at: str

    @property
    def applicable(self) -> list[BatchIndexEntry]:
        return [i for i in self.indexes if i.applicable]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["shared_patch"] = self.shared_patch.to_dict()
        return {"version": self.version, "batch_id": self.batch_id, **data}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "batch plan") -> BatchPlan:
        return convert_document(
            data, cls, source=source, what="batch plan", version=BATCH_FORMAT_VERSION
        )


class BatchIndexState(Model, frozen=True, kw_only=True):
    name: str
    status: IndexStatus = "pending"
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    report_path: str | None = None
    attempts: int = 0


class BatchState(Model, ReviewableFile, frozen=True, kw_only=True):
    """Progress of a batch run, rewritten atomically after every index."""

    file_kind: ClassVar[str] = "batch state file"

    version: int = BATCH_FORMAT_VERSION
    batch_id: str
    plan_path: str
    plan_sha256: str
    backup_dir: str
    report_dir: str
    started_at: str
    updated_at: str
    indexes: list[BatchIndexState]

    def entry(self, name: str) -> BatchIndexState:
        for entry in self.indexes:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def with_entry(self, entry: BatchIndexState) -> BatchState:
        return msgspec.structs.replace(
            self,
            indexes=[entry if e.name == entry.name else e for e in self.indexes],
            updated_at=now_iso(),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return {"version": self.version, "batch_id": self.batch_id, **data}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "batch state file") -> BatchState:
        return convert_document(
            data, cls, source=source, what="batch state file", version=BATCH_FORMAT_VERSION
        )


class BatchSummary(Model, frozen=True, kw_only=True):
    total_indexes: int
    successful: int
    failed: int
    skipped: int
    total_duration_seconds: float


class BatchIndexReport(Model, frozen=True, kw_only=True):
    name: str
    status: IndexStatus
    duration_seconds: float | None = None
    documents: int | None = None
    report_path: str | None = None
    error: str | None = None


class BatchReport(Model, ReviewableFile, frozen=True, kw_only=True):
    file_kind: ClassVar[str] = "batch report"

    version: int = BATCH_FORMAT_VERSION
    batch_id: str
    status: Literal["completed", "partial_failure", "failed"]
    summary: BatchSummary
    indexes: list[BatchIndexReport]
    started_at: str
    completed_at: str

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return {"version": self.version, "batch_id": self.batch_id, "status": self.status, **data}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "batch report") -> BatchReport:
        return convert_document(
            data, cls, source=source, what="batch report", version=BATCH_FORMAT_VERSION
        )


def new_batch_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    return f"batch_{stamp}_{secrets.token_hex(3)}"


def file_sha256(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def select_indexes(
    available: Sequence[str],
    *,
    pattern: str | None = None,
    names: Sequence[str] | None = None,
) -> list[str]:
    """The indexes a batch covers: by glob ``pattern`` or an explicit list (order kept)."""
    if (pattern is None) == (names is None):
        raise BadInputError("give exactly one of --pattern, --indexes or --indexes-file")
    if pattern is not None:
        chosen = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not chosen:
            raise BadInputError(f"no index matches the pattern {pattern!r}")
        return chosen
    assert names is not None
    cleaned = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not cleaned:
        raise BadInputError("the index selection is empty")
    missing = [n for n in cleaned if n not in available]
    if missing:
        raise BadInputError("no such index on the server: " + ", ".join(repr(n) for n in missing))
    return cleaned


def overlap_conflicts(entries: Sequence[BatchIndexEntry]) -> list[str]:
    """``a <-> b: 'p:' <-> 'p:x:'`` for every pair of applicable indexes sharing keys."""
    applicable = [e for e in entries if e.applicable]
    conflicts = []
    for i, first in enumerate(applicable):
        for second in applicable[i + 1 :]:
            for x, y in prefixes_overlap(first.prefixes, second.prefixes):
                conflicts.append(f"{first.name} <-> {second.name}: {x!r} <-> {y!r}")
    return conflicts


def overlap_error(conflicts: Sequence[str]) -> BadInputError:
    return BadInputError(
        "refusing to create the batch plan: overlapping indexes detected; several indexes "
        "in the batch share key prefixes, so one run could change the same keys twice "
        "(re-encoding vectors twice corrupts them). Conflicts: "
        + "; ".join(conflicts)
        + ". Migrate overlapping indexes one at a time, or split the selection into "
        "prefix-disjoint groups and run batch-plan once per group"
    )
