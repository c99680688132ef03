"""The preflight: what must hold before a run writes anything. Pure code.

Facts about the server, the user's permissions, the disk and the data are gathered by
the async layer (aio/preflight.py); the rules here turn them into a checklist with one
line per check: ``pass``, ``warn`` (the run goes ahead, the line says what to watch) or
``block`` (the run is refused before its first write, with exit code 5, or 2 for a bad
parameter of the target schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from redismigrate.errors import RedisMigrateError
from redismigrate.limits import schema_problems
from redismigrate.memory import ROOM_MARGIN
from redismigrate.schema import IndexSchema, Model

PREFLIGHT_FORMAT_VERSION = 1
Status = Literal["pass", "warn", "block"]
# the checks, in the order they are shown
CHECKS = ("topology", "permissions", "parameters", "memory", "eviction", "disk", "data")
# memory a run may use: at most this share of the headroom under maxmemory
MEMORY_MARGIN = ROOM_MARGIN
# free disk a backup needs: its estimated size times this, plus a fixed reserve
DISK_MARGIN = 1.2
DISK_RESERVE_BYTES = 64 << 20
EVICTING_POLICIES = (
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


class PreflightBlocked(RedisMigrateError):
    """A preflight check refused the run before anything was written."""

    exit_code = 5


class PreflightCheck(Model, frozen=True, kw_only=True):
    """One line of the checklist."""

    check: str
    status: Status
    detail: str


class Preflight(Model, frozen=True, kw_only=True):
    """Every check of one run, in ``CHECKS`` order."""

    version: int = PREFLIGHT_FORMAT_VERSION
    checks: list[PreflightCheck] = msgspec.field(default_factory=list)

    @property
    def blocked(self) -> list[PreflightCheck]:
        return [c for c in self.checks if c.status == "block"]

    @property
    def warnings(self) -> list[PreflightCheck]:
        return [c for c in self.checks if c.status == "warn"]

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self)
        return {"version": self.version, **data}

    def raise_if_blocked(self) -> None:
        """PreflightBlocked naming every blocking check, in one line."""
        blocked = self.blocked
        if blocked:
            reasons = "; ".join(f"{c.check}: {c.detail}" for c in blocked)
            error = PreflightBlocked(f"preflight refused the run, nothing was changed: {reasons}")
            if any(c.check == "parameters" for c in blocked):
                error.exit_code = 2  # a bad value in the plan: bad input, as at plan time
            raise error


def ordered(checks: list[PreflightCheck]) -> Preflight:
    """The checks sorted into the order they are shown."""
    rank = {name: i for i, name in enumerate(CHECKS)}
    return Preflight(checks=sorted(checks, key=lambda c: rank.get(c.check, len(CHECKS))))


_SEVERITY: dict[str, int] = {"pass": 0, "warn": 1, "block": 2}


def merge_per_node(check: str, per_node: Sequence[tuple[str, PreflightCheck]]) -> PreflightCheck:
    """One line of ``check`` for a cluster from each primary's own (``(label, check)``):
    the worst status; the detail names every primary that did not pass, or says all did
    (with the first primary's detail as the example)."""
    if not per_node:
        raise ValueError("no primary to merge")
    worst = max((c.status for _, c in per_node), key=_SEVERITY.__getitem__)
    failing = [(label, c) for label, c in per_node if c.status != "pass"]
    if not failing:
        label, first = per_node[0]
        count = len(per_node)
        return PreflightCheck(
            check=check,
            status="pass",
            detail=f"every primary ({count}) passes; {label}: {first.detail}",
        )
    shown = "; ".join(f"on {label}: {c.detail}" for label, c in failing)
    return PreflightCheck(check=check, status=worst, detail=shown)


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def memory_check(
    *, growth_bytes: int, used_bytes: int, maxmemory: int, writes_documents: bool
) -> PreflightCheck:
    """Whether the growth the plan computes fits under maxmemory with a margin."""
    if maxmemory <= 0:
        return PreflightCheck(
            check="memory",
            status="pass" if growth_bytes <= 0 or not writes_documents else "warn",
            detail=(
                "no maxmemory limit"
                + (
                    f"; the run needs about {human_bytes(growth_bytes)} more"
                    if growth_bytes > 0
                    else ""
                )
            ),
        )
    headroom = maxmemory - used_bytes
    if growth_bytes <= 0:
        return PreflightCheck(
            check="memory",
            status="pass",
            detail=f"the run frees memory; {human_bytes(headroom)} free under maxmemory",
        )
    allowed = int(headroom * MEMORY_MARGIN)
    text = (
        f"the run needs about {human_bytes(growth_bytes)} more; "
        f"{human_bytes(max(headroom, 0))} free under maxmemory {human_bytes(maxmemory)}"
    )
    if growth_bytes > allowed:
        return PreflightCheck(
            check="memory",
            status="block",
            detail=f"{text} (at most {int(MEMORY_MARGIN * 100)}% of it may be used): "
            "raise maxmemory or free memory first",
        )
    return PreflightCheck(check="memory", status="pass", detail=text)


def eviction_check(*, policy: str, writes_documents: bool, allow_eviction: bool) -> PreflightCheck:
    """An evicting maxmemory-policy blocks a run that writes documents."""
    if policy not in EVICTING_POLICIES:
        return PreflightCheck(
            check="eviction", status="pass", detail=f"maxmemory-policy {policy} evicts nothing"
        )
    if not writes_documents:
        return PreflightCheck(
            check="eviction",
            status="pass",
            detail=f"maxmemory-policy {policy}, but the run writes no documents",
        )
    if allow_eviction:
        return PreflightCheck(
            check="eviction",
            status="warn",
            detail=f"maxmemory-policy {policy} may evict documents during the run "
            "(--allow-eviction); any eviction stops the run and undoes it",
        )
    return PreflightCheck(
        check="eviction",
        status="block",
        detail=f"maxmemory-policy {policy} may evict a document while it is being "
        "migrated; set maxmemory-policy noeviction for the run, or pass --allow-eviction",
    )


def disk_check(*, needed_bytes: int, free_bytes: int | None, path: str) -> PreflightCheck:
    """Free space where the backup goes, for its size plus a margin."""
    if free_bytes is None:
        return PreflightCheck(
            check="disk", status="warn", detail=f"cannot tell the free space at {path}"
        )
    wanted = int(needed_bytes * DISK_MARGIN) + DISK_RESERVE_BYTES
    text = (
        f"the backup needs about {human_bytes(needed_bytes)}; "
        f"{human_bytes(free_bytes)} free at {path}"
    )
    if free_bytes < wanted:
        return PreflightCheck(
            check="disk",
            status="block",
            detail=f"{text} (wanted {human_bytes(wanted)} with the margin)",
        )
    return PreflightCheck(check="disk", status="pass", detail=text)


def data_check(
    *, malformed: int, missing: int, sample: list[str], vector_fields: int
) -> PreflightCheck:
    """Documents whose vector has the wrong byte length, or none."""
    if vector_fields == 0:
        return PreflightCheck(check="data", status="pass", detail="no vector field is re-encoded")
    if malformed == 0 and missing == 0:
        return PreflightCheck(
            check="data", status="pass", detail="every vector has the byte length of its field"
        )
    parts = []
    if malformed:
        shown = ", ".join(repr(k) for k in sample)
        parts.append(
            f"{malformed:,} document(s) hold a vector of the wrong byte length (e.g. {shown})"
        )
    if missing:
        parts.append(f"{missing:,} vector value(s) are missing or empty")
    return PreflightCheck(
        check="data",
        status="warn",
        detail="; ".join(parts) + ": they are left as they are and listed in the report",
    )


def parameters_check(schema: IndexSchema) -> PreflightCheck:
    """Every attribute of the target schema in the range the server takes (limits.py).

    A block here is a bad parameter (exit 2 where the caller reports it as such): a
    plan edited by hand or made by an older version, whose ``FT.CREATE`` would be
    refused after the old index was dropped.
    """
    problems = schema_problems(schema)
    if not problems:
        return PreflightCheck(
            check="parameters",
            status="pass",
            detail="every attribute of the target schema is in range",
        )
    return PreflightCheck(check="parameters", status="block", detail="; ".join(problems))
