"""Migration reports: what apply and validate did, measured. Pure code."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from redismigrate.files import ReviewableFile, convert_document
from redismigrate.plan import VectorChange
from redismigrate.preflight import PreflightCheck
from redismigrate.schema import Model

REPORT_FORMAT_VERSION = 1
MALFORMED_KEYS_LISTED = 100
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
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


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
    # the file this report was written to beside the backup (apply writes it there)
    report_file: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.result == "succeeded"

    def timing(self, step: str) -> float:
        return sum(t.seconds for t in self.timings if t.step == step)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return {"version": self.version, "result": self.result, **data}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "report") -> MigrationReport:
        return convert_document(
            data, cls, source=source, what="migration report", version=REPORT_FORMAT_VERSION
        )
