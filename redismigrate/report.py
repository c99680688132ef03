"""Migration reports: what apply and validate did, measured. Pure code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import msgspec

from redismigrate.files import ReviewableFile, convert_document
from redismigrate.plan import VectorChange
from redismigrate.preflight import PreflightCheck
from redismigrate.schema import IndexSchema, Model, schema_layout
from redismigrate.shadow import ShadowReport
from redismigrate.throttle import ThrottleReport

REPORT_FORMAT_VERSION = 1
MALFORMED_KEYS_LISTED = 100
MIN_RATE_SECONDS = 0.05  # a step shorter than this gets no rate: it would be noise
Result = Literal["succeeded", "failed", "rolled_back"]
STEPS = (
    "check",
    "enumerate",
    "field_renames",
    "backup",
    "drop",
    "key_renames",
    "reencode",
    "create",
    "indexing",
    "validate",
)


class StepTiming(Model, frozen=True, kw_only=True):
    step: str
    seconds: float
    items: int = 0

    @property
    def per_second(self) -> float | None:
        """Items a second; None for a step without items or too short to measure one."""
        if not self.items or self.seconds < MIN_RATE_SECONDS:
            return None
        return self.items / self.seconds


class ShardDocuments(Model, frozen=True, kw_only=True):
    """The documents one primary of a Redis Cluster holds under the index's prefixes."""

    node_id: str
    address: str
    documents: int


def shard_count_error(shards: Sequence[ShardDocuments], indexed: int) -> str | None:
    """The validation error when the primaries' documents do not add up to what the
    index counts (``indexed``: its documents plus indexing failures); None when they do."""
    held = sum(s.documents for s in shards)
    if held == indexed:
        return None
    each = ", ".join(f"{s.node_id[:8]} {s.documents:,}" for s in shards)
    return (
        f"document count mismatch across the primaries: they hold {held:,} documents under "
        f"the prefixes ({each}), the index counts {indexed:,} (documents + indexing failures)"
    )


class ValidationResult(Model, frozen=True, kw_only=True):
    """Checks of a live index against its plan; ``passed`` only when every one holds."""

    passed: bool
    schema_match: bool
    doc_count_match: bool
    source_documents: int
    target_documents: int
    indexing_failures_before: int
    indexing_failures_after: int
    keys_sampled: int = 0
    keys_missing: list[str] = []
    vectors_checked: int = 0
    vectors_mismatched: list[str] = []
    errors: list[str] = []
    # a Redis Cluster: what each primary holds (their sum is held against the index)
    shards: list[ShardDocuments] = []


class ConcurrentWrites(Model, frozen=True, kw_only=True):
    """What the application wrote during a run, and what the migrator did about it."""

    capture: str  # "notifications", or "sweep: <why>" when every key was checked instead
    writes_seen: int = 0  # notifications of the application's writes
    keys_written: int = 0  # keys looked at again: written by the application, or skipped
    reencoded: int = 0
    moved: int = 0
    fields_renamed: int = 0
    touched: int = 0
    unreconciled: int = 0
    unreconciled_keys: list[str] = []  # the first 1,000, each with the reason


class Benchmark(Model, frozen=True, kw_only=True):
    documents: int
    total_seconds: float
    downtime_seconds: float
    documents_per_second: float
    index_size_before_mb: float
    index_size_after_mb: float
    peak_memory_mb: float | None = None


class MemoryUse(Model, frozen=True, kw_only=True):
    """The server's memory around a run: the memory model's figure beside what was measured.

    ``used_memory_*`` and ``dataset_*`` are INFO memory's ``used_memory`` and
    ``used_memory_dataset`` before the run started and when it ended (None when the
    server would not say, or the run resumed an earlier one: then "before" was not
    seen). The measured change is the dataset's: ``used_memory`` also moves with the
    server's own overhead (client connections and their buffers, the run's among them),
    which is not the data's.
    """

    model_change_bytes: int
    used_memory_before: int | None = None
    used_memory_after: int | None = None
    dataset_before: int | None = None
    dataset_after: int | None = None

    @property
    def measured_change_bytes(self) -> int | None:
        if self.dataset_before is None or self.dataset_after is None:
            return None
        return self.dataset_after - self.dataset_before


class MigrationReport(Model, ReviewableFile, frozen=True, kw_only=True):
    """The outcome of one apply (or validate) run."""

    file_kind: ClassVar[str] = "migration report"

    version: int = REPORT_FORMAT_VERSION
    mode: str = "drop_recreate"
    result: Result
    source_index: str
    target_index: str
    plan_hash: str
    started_at: str
    finished_at: str
    backup_dir: str | None = None
    backup_files: list[str] = []
    resumed: bool = False
    documents: int = 0
    vectors_reencoded: int = 0
    keys_renamed: int = 0
    documents_with_fields_renamed: int = 0
    timings: list[StepTiming] = []
    downtime_seconds: float = 0.0
    total_seconds: float = 0.0
    vector_changes: list[VectorChange] = []
    validation: ValidationResult | None = None
    benchmark: Benchmark | None = None
    warnings: list[str] = []
    error: str | None = None
    undone: bool = False
    next_steps: list[str] = []
    concurrent_writes: ConcurrentWrites | None = None
    # documents whose vector had another byte length than its field's: left as they were
    malformed_vectors: int = 0
    malformed_vector_keys: list[str] = []  # the first MALFORMED_KEYS_LISTED of them
    preflight: list[PreflightCheck] = []
    memory: MemoryUse | None = None
    # the file this report was written to beside the backup (apply writes it there)
    report_file: str | None = None
    # online re-encoding of hash vectors: what each stage did (redismigrate/shadow.py)
    online_reencode: ShadowReport | None = None
    # the schema the run built (the plan's merged target), written in full
    target_schema: IndexSchema | None = None
    # how the writes made while the index served were throttled (redismigrate/throttle.py):
    # set when the run had a max rate or the load guard backed off
    throttle: ThrottleReport | None = None

    @property
    def succeeded(self) -> bool:
        return self.result == "succeeded"

    def timing(self, step: str) -> float:
        return sum(t.seconds for t in self.timings if t.step == step)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        if self.target_schema is not None:
            data["target_schema"] = self.target_schema.to_dict()
        return {"version": self.version, "result": self.result, **data}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "report") -> MigrationReport:
        if isinstance(data, dict) and "target_schema" in data:
            data = {**data, "target_schema": schema_layout(data["target_schema"])}
        return convert_document(
            data, cls, source=source, what="migration report", version=REPORT_FORMAT_VERSION
        )
