"""Integrity before destruction: a plan agrees with itself, a backup with itself and its plan.

Pure code, except :func:`verify_backup_for_plan`, which reads the backup files through
:func:`redismigrate.backup.verify_backup`.

A plan carries ``content_hash`` over the rest of its content, and its merged target,
renames and vector changes are re-derived here from its own source snapshot and
requested changes: a plan edited after review fails one or the other. A backup is
trusted for a rollback only when every file checks out and its header describes the
plan kept beside it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from redismigrate.backup import (
    BackupContents,
    BackupCorrupt,
    BackupError,
    BackupField,
    verify_backup,
)
from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.patch import SchemaPatch
from redismigrate.plan import (
    MigrationPlan,
    Online,
    build_plan,
    plain_data,
    plan_content_hash,
    plan_hash,
    schema_hash,
)
from redismigrate.quantize import Encoding

PLAN_AGAIN = "run `redismigrate plan` again and review the new plan"
_UNSET = object()


# --------------------------------------------------------------------------- plans


def rederive(plan: MigrationPlan) -> MigrationPlan:
    """The plan ``build_plan`` makes from ``plan``'s own snapshot and requested changes.

    Inputs the plan does not keep are left out (other indexes, vector samples, --force):
    only the parts that are a function of the snapshot and the changes are comparable.
    """
    encodings: dict[str, Encoding] = {
        vc.source_field: vc.encoding for vc in plan.vector_changes if vc.encoding is not None
    }
    return build_plan(
        source_schema=plan.source.schema_snapshot,
        source_stats=plan.source.stats_snapshot,
        key_sample=plan.source.keyspace.key_sample,
        capabilities=plan.source.server,
        patch=SchemaPatch(changes=plan.requested_changes),
        encodings=encodings,
        created_at=plan.created_at,
        mode="online" if isinstance(plan.mode, Online) else "drop_recreate",
        physical_index=plan.source.physical_index or plan.source.index_name,
        unreported=plan.source.unreported,
        keep_shadow_field=isinstance(plan.mode, Online)
        and plan.mode.reencode is not None
        and plan.mode.reencode.variant == "keep_shadow_field",
        wait_for_new_encoding=not isinstance(plan.mode, Online)
        or plan.mode.reencode is None
        or plan.mode.reencode.wait_for_new_encoding,
    )


def plan_problems(plan: MigrationPlan) -> list[str]:
    """Why ``plan`` cannot be trusted as reviewed: a missing or wrong content hash, or
    parts that disagree with its snapshot and requested changes. Empty when it holds."""
    problems: list[str] = []
    if not plan.content_hash:
        problems.append("it has no content_hash (made by an older redismigrate, or removed)")
    elif plan.content_hash != plan_content_hash(plan):
        problems.append("its content does not match its content_hash: it was edited after review")
    for vc in plan.vector_changes:
        encoding = vc.encoding
        if encoding is not None and (encoding.source, encoding.target) != (
            vc.source_datatype,
            vc.target_datatype,
        ):
            problems.append(
                f"vector_changes[{vc.field!r}] goes {vc.source_datatype} -> "
                f"{vc.target_datatype} but its encoding goes {encoding.source} -> "
                f"{encoding.target}"
            )
    if not plan.supported:
        return problems  # refused as blocked anyway; blocks may rest on facts not kept
    try:
        derived = rederive(plan)
    except RedisMigrateError as exc:
        return [*problems, f"its requested changes no longer apply to its snapshot: {exc}"]
    pairs: list[tuple[str, Any, Any]] = [
        ("source.index_name", plan.source.index_name, derived.source.index_name),
        ("source.physical_index", plan.source.physical_index, derived.source.physical_index),
        ("source.schema_hash", plan.source.schema_hash, derived.source.schema_hash),
        ("source.schema_snapshot", plan.source.schema_snapshot, derived.source.schema_snapshot),
        ("source.keyspace", plan.source.keyspace, derived.source.keyspace),
        ("merged_target_schema", plan.merged_target_schema, derived.merged_target_schema),
        ("rename_operations", plan.rename_operations, derived.rename_operations),
        ("vector_changes", plan.vector_changes, derived.vector_changes),
    ]
    if isinstance(plan.mode, Online) and isinstance(derived.mode, Online):
        pairs.append(
            (
                "mode.previous_physical_index",
                plan.mode.previous_physical_index,
                derived.mode.previous_physical_index,
            )
        )
        # the shadow fields documents get, and the field the shadow index reads
        pairs.append(("mode.reencode", plan.mode.reencode, derived.mode.reencode))
    for path, found, expected in pairs:
        difference = _difference(path, plain_data(found), plain_data(expected))
        if difference:
            problems.append(difference)
    for block in derived.diff_classification.blocked_reasons:
        forced = f"Forced: {block.change}: {block.reason}"
        if not block.forceable or forced not in plan.warnings:
            problems.append(f"it says it is supported, but {block}")
    return problems


def check_plan(plan: MigrationPlan, *, source: str | None = None) -> None:
    """BadInputError (one line) when ``plan`` is not the plan that was made and reviewed."""
    problems = plan_problems(plan)
    if problems:
        where = f"plan {source}" if source else "the plan"
        raise BadInputError(f"{where} cannot be applied: {problems[0]}; {PLAN_AGAIN}")


def _difference(path: str, found: Any, expected: Any) -> str | None:
    """The first place where two plain-data values differ, as one phrase; None if equal."""
    if found == expected:
        return None
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in [*found, *(k for k in expected if k not in found)]:
            inner = _difference(f"{path}.{key}", found.get(key, _UNSET), expected.get(key, _UNSET))
            if inner:
                return inner
    if isinstance(found, list) and isinstance(expected, list):
        for i, (a, b) in enumerate(zip(found, expected, strict=False)):
            inner = _difference(f"{path}[{_label(a, b, i)}]", a, b)
            if inner:
                return inner
        if len(found) != len(expected):
            return (
                f"{path} has {len(found)} entries in the plan, but its snapshot and requested "
                f"changes give {len(expected)}"
            )
    return (
        f"{path} is {_shown(found)} in the plan, but its snapshot and requested changes give "
        f"{_shown(expected)}"
    )


def _label(a: Any, b: Any, i: int) -> str:
    """A list item by its name (fields, vector changes) where both sides agree on it."""
    for key in ("name", "field", "old_name"):
        if isinstance(a, dict) and isinstance(b, dict) and a.get(key) == b.get(key) is not None:
            return repr(a[key])
    return str(i)


def _shown(value: Any) -> str:
    return "unset (the default)" if value is _UNSET else repr(value)


# --------------------------------------------------------------------------- backups


def expected_backup_fields(plan: MigrationPlan) -> dict[str, BackupField]:
    """The ``fields`` of a backup made for ``plan``: one per re-encoded hash field,
    ``document_field`` being where its bytes are when the backup is read (after renames)."""
    fields: dict[str, BackupField] = {}
    for vc in plan.vector_changes:
        if not vc.rewrite_documents:
            continue
        document_field = next(
            (
                r.new_path
                for r in plan.rename_operations.rename_fields
                if r.old_name == vc.source_field
            ),
            None,
        )
        if document_field is None:
            field = plan.source.schema_snapshot.field(vc.source_field)
            document_field = (field.path or field.name) if field is not None else vc.source_field
        fields[vc.source_field] = BackupField(
            source_datatype=vc.source_datatype,
            target_datatype=vc.target_datatype,
            dims=vc.dims,
            document_field=document_field,
        )
    return fields


def backup_problems(contents: BackupContents, plan: MigrationPlan) -> list[str]:
    """Where the backup's headers disagree with ``plan`` (the plan it says it was made for)."""
    wanted: Mapping[str, Any] = {
        "index_name": plan.source.index_name,
        "plan_hash": plan_hash(plan),
        "source_schema_hash": plan.source.schema_hash,
        "target_schema_hash": schema_hash(plan.merged_target_schema),
    }
    problems: list[str] = []
    header = contents.header  # shards were checked against it
    for name, value in wanted.items():
        if getattr(header, name) != value:
            problems.append(
                f"its header's {name} is {getattr(header, name)!r}, the plan's {value!r}"
            )
    expected = expected_backup_fields(plan)
    if set(header.fields) != set(expected):
        problems.append(
            f"its header backs up fields {sorted(header.fields)}, the plan re-encodes "
            f"{sorted(expected)}"
        )
    for name in sorted(set(header.fields) & set(expected)):
        found, should = header.fields[name], expected[name]
        for attr in ("document_field", "source_datatype", "target_datatype", "dims"):
            if getattr(found, attr) != getattr(should, attr):
                problems.append(
                    f"its header says field {name!r} has {attr} {getattr(found, attr)!r}, the "
                    f"plan says {getattr(should, attr)!r}"
                )
    return problems


def verify_backup_for_plan(
    backup_dir: str | os.PathLike[str], plan: MigrationPlan
) -> BackupContents:
    """Check the whole backup of ``plan`` before anything is restored or dropped.

    Every file (checksums, every frame), then its header against ``plan`` and ``plan``
    against itself. BackupCorrupt (one line: nothing was undone) when any fails.
    """
    where = f"the backup of index {plan.source.index_name!r} in {os.fspath(backup_dir)}"
    try:
        contents = verify_backup(backup_dir, plan.source.index_name)
    except BackupError as exc:
        raise BackupCorrupt(f"nothing was undone: {exc}") from None
    problems = backup_problems(contents, plan) + [
        f"the plan kept with it: {p}" for p in plan_problems(plan)
    ]
    if problems:
        raise BackupCorrupt(f"nothing was undone: {where} does not match its plan: {problems[0]}")
    return contents


def check_plan_copy(plan: MigrationPlan, path: str | os.PathLike[str]) -> None:
    """BackupCorrupt (one line: nothing was undone) when the plan kept beside a backup
    is not the plan that was applied (edited, or its parts disagree)."""
    problems = plan_problems(plan)
    if problems:
        raise BackupCorrupt(
            f"nothing was undone: the plan kept in {os.fspath(path)} cannot be trusted: "
            f"{problems[0]}"
        )
