"""Migration plans: a source snapshot plus a patch, merged, classified and explained.

Pure code: the async planner gathers the facts from the server and calls
:func:`build_plan`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec
import numpy as np

from redismigrate.capabilities import ServerCapabilities
from redismigrate.errors import SchemaError
from redismigrate.files import ReviewableFile, convert_document
from redismigrate.ftinfo import IndexStats
from redismigrate.limits import index_problems
from redismigrate.memory import MemoryRoom, mb, memory_sentence, model_memory
from redismigrate.patch import FieldRename, SchemaChanges, SchemaPatch, parse_field
from redismigrate.quantize import Encoding, ReEncodingRefused, calibrate, uint8_policy
from redismigrate.schema import (
    Field,
    IndexOptions,
    IndexSchema,
    Model,
    UnreportedAttribute,
    VectorField,
    default_json_path,
    schema_layout,
    type_name,
    validate_schema,
)
from redismigrate.shadow import ShadowReencode, shadow_reencode_for, shadow_warnings

PLAN_FORMAT_VERSION = 1
INTEGER_TYPES = ("int8", "uint8")


class DropRecreate(Model, frozen=True, kw_only=True, tag="drop_recreate", tag_field="name"):
    """Drop the index definition (documents stay), rewrite documents, create the target."""


class Online(Model, frozen=True, kw_only=True, tag="online", tag_field="name"):
    """Build the target as a shadow index beside the live one, then swap the name to it
    atomically (an alias): no downtime. For index-only changes, and for re-encoding hash
    vectors through shadow fields (``reencode``; no field renames or prefix changes)."""

    shadow_index: str
    # the live index behind the name when the plan was made (the name may be an alias)
    previous_physical_index: str
    # hash vectors re-encoded into shadow fields the shadow index reads (redismigrate.shadow)
    reencode: ShadowReencode | None = None


Mode = DropRecreate | Online
MODES = ("drop_recreate", "online")


class Keyspace(Model, frozen=True, kw_only=True):
    storage_type: str
    prefixes: list[str]
    key_separator: str
    key_sample: list[str] = []


class SourceSnapshot(Model, frozen=True, kw_only=True):
    """The live index as it was when the plan was made."""

    index_name: str
    # the index behind ``index_name`` when that name is an alias (online migrations)
    physical_index: str | None = None
    # user aliases of the source index: moved to the target once it is ready (and back
    # on undo); the server lists them (search 8.10+) or they were named with --alias
    aliases: list[str] = []
    schema_hash: str
    schema_snapshot: IndexSchema
    stats_snapshot: IndexStats
    keyspace: Keyspace
    server: ServerCapabilities
    captured_at: str
    # vector parameters the server did not report: the snapshot holds the value an
    # earlier redismigrate run recorded (named there), else the server's default
    unreported: list[UnreportedAttribute] = []


class BlockedChange(Model, frozen=True, kw_only=True):
    """One change the plan refuses, why, and what to do instead."""

    change: str
    reason: str
    workaround: str
    forceable: bool = False

    def __str__(self) -> str:
        return f"{self.change}: {self.reason}. Workaround: {self.workaround}"


class DiffClassification(Model, frozen=True, kw_only=True):
    supported: bool
    blocked_reasons: list[BlockedChange] = []


class PrefixChange(Model, frozen=True, kw_only=True):
    old: str
    new: str


class FieldRenameOp(Model, frozen=True, kw_only=True):
    """A field renamed in the schema and in every document (hash field or JSON path)."""

    old_name: str
    new_name: str
    old_path: str
    new_path: str


class RenameOperations(Model, frozen=True, kw_only=True):
    rename_index: str | None = None
    change_prefix: PrefixChange | None = None
    rename_fields: list[FieldRenameOp] = []

    @property
    def any(self) -> bool:
        return bool(self.rename_index or self.change_prefix or self.rename_fields)


class VectorChange(Model, frozen=True, kw_only=True):
    """A vector field whose datatype changes, and how its stored bytes are re-encoded."""

    field: str
    source_field: str
    dims: int
    source_datatype: str
    target_datatype: str
    distance_metric: str
    # hash documents are rewritten; JSON arrays are re-read by the server as they are
    rewrite_documents: bool
    encoding: Encoding | None = None

    @property
    def lossy(self) -> bool:
        return bool(self.encoding is not None and self.encoding.lossy)


class MigrationPlan(Model, ReviewableFile, frozen=True, kw_only=True):
    """Everything a person reviews before applying, and the executor follows."""

    file_kind: ClassVar[str] = "migration plan"

    version: int = PLAN_FORMAT_VERSION
    mode: Mode = DropRecreate()
    created_at: str
    source: SourceSnapshot
    requested_changes: SchemaChanges
    merged_target_schema: IndexSchema
    diff_classification: DiffClassification
    rename_operations: RenameOperations = RenameOperations()
    vector_changes: list[VectorChange] = []
    warnings: list[str] = []
    # sha256 of everything else (``plan_content_hash``), set when the plan is made
    content_hash: str = ""

    @property
    def supported(self) -> bool:
        return self.diff_classification.supported

    @property
    def target_index_name(self) -> str:
        return self.merged_target_schema.name

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["source"]["schema_snapshot"] = self.source.schema_snapshot.to_dict()
        data["merged_target_schema"] = self.merged_target_schema.to_dict()
        data.pop("version", None)
        data.pop("mode", None)
        digest = data.pop("content_hash", None)
        ordered = {"version": self.version, "mode": msgspec.to_builtins(self.mode)}
        if digest:
            ordered["content_hash"] = digest
        ordered.update(data)
        return ordered

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "plan") -> MigrationPlan:
        if isinstance(data, dict):
            data = dict(data)
            if "merged_target_schema" in data:
                data["merged_target_schema"] = schema_layout(data["merged_target_schema"])
            snapshot = data.get("source")
            if isinstance(snapshot, dict) and "schema_snapshot" in snapshot:
                data["source"] = {
                    **snapshot,
                    "schema_snapshot": schema_layout(snapshot["schema_snapshot"]),
                }
        return convert_document(
            data, cls, source=source, what="migration plan", version=PLAN_FORMAT_VERSION
        )


def schema_hash(schema: IndexSchema) -> str:
    """A stable hash of what the server would report for ``schema``."""
    return "sha256:" + hashlib.sha256(canonical_json(schema.canonical())).hexdigest()


def canonical_json(value: Any) -> bytes:
    """``value`` as JSON that depends only on what it means: keys sorted, no spaces, struct
    fields equal to their defaults left out, integral floats written as integers (so a
    struct built in memory and the same struct read back from a file give the same bytes)."""
    text = json.dumps(plain_data(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def plain_data(value: Any) -> Any:
    """Plain data for ``value``, by meaning (see ``canonical_json``); keys in field order."""
    if isinstance(value, msgspec.Struct):
        config = value.__struct_config__
        out: dict[str, Any] = {}
        if config.tag_field is not None:
            out[config.tag_field] = config.tag
        for info in msgspec.structs.fields(value):
            item = getattr(value, info.name)
            default = info.default
            if info.default_factory is not msgspec.NODEFAULT:
                default = info.default_factory()
            if default is not msgspec.NODEFAULT and item == default:
                continue
            out[info.encode_name] = plain_data(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class OtherIndex(msgspec.Struct, frozen=True, kw_only=True):
    """Another live index on the same server (for name clashes and shared keys)."""

    name: str
    storage_type: str
    prefixes: list[str]


def prefixes_overlap(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs where one prefix is a string prefix of the other (FT.CREATE PREFIX rule)."""
    return [(x, y) for x in a for y in b if x.startswith(y) or y.startswith(x)]


# --------------------------------------------------------------------------- building


class _Builder:
    """Applies a patch to a source schema, collecting blocks, warnings and operations."""

    def __init__(self, source: IndexSchema) -> None:
        self.source = source
        self.storage = source.storage_type
        self.fields: dict[str, Field] = {f.name: f for f in source.fields}
        self.origin: dict[str, str] = {f.name: f.name for f in source.fields}
        self.blocked: list[BlockedChange] = []
        self.warnings: list[str] = []
        self.renames: list[FieldRenameOp] = []

    def block(self, change: str, reason: str, workaround: str, *, forceable: bool = False) -> None:
        self.blocked.append(
            BlockedChange(change=change, reason=reason, workaround=workaround, forceable=forceable)
        )

    def find(self, name: str) -> str | None:
        """The current name of a field given by its current or original name."""
        if name in self.fields:
            return name
        for current, original in self.origin.items():
            if original == name:
                return current
        return None


def _contradictions(changes: SchemaChanges, b: _Builder) -> set[str]:
    """Fields touched by changes that cannot all hold; blocks each and returns the names."""
    bad: set[str] = set()
    removed = set(changes.remove_fields)
    renamed_from: dict[str, list[str]] = {}
    renamed_to: dict[str, list[str]] = {}
    for rename in changes.rename_fields:
        renamed_from.setdefault(rename.old_name, []).append(rename.new_name)
        renamed_to.setdefault(rename.new_name, []).append(rename.old_name)
    workaround = "keep one change per field in the patch"
    for name, targets in renamed_from.items():
        if len(set(targets)) > 1:
            b.block(
                f"rename field {name!r}",
                f"it is renamed to {', '.join(map(repr, targets))} at once",
                workaround,
            )
            bad.add(name)
        if name in removed:
            b.block(f"rename field {name!r}", "the same patch also removes it", workaround)
            bad.add(name)
    for name, sources in renamed_to.items():
        if len(set(sources)) > 1:
            b.block(
                f"rename onto {name!r}",
                f"fields {', '.join(map(repr, sources))} are all renamed to it",
                workaround,
            )
            bad.update(sources)
    updates: dict[str, dict[str, Any]] = {}
    for update in changes.update_fields:
        if update.name in removed:
            b.block(f"update field {update.name!r}", "the same patch also removes it", workaround)
            bad.add(update.name)
        seen = updates.setdefault(update.name, {})
        for key, value in update.all_attrs.items():
            if key in seen and seen[key] != value:
                b.block(
                    f"update field {update.name!r}",
                    f"attribute {key!r} is set to both {seen[key]!r} and {value!r}",
                    workaround,
                )
                bad.add(update.name)
            seen[key] = value
    added: dict[str, int] = {}
    for raw in changes.add_fields:
        name = str(raw.get("name"))
        added[name] = added.get(name, 0) + 1
        if added[name] == 2:
            b.block(f"add field {name!r}", "it is added twice", workaround)
            bad.add(name)
    return bad


def _merge_attrs(field: Field, attrs: Mapping[str, Any], storage: str, source: str) -> Field:
    data: dict[str, Any] = {
        "name": field.name,
        "type": type_name(field),
        "attrs": {**msgspec.structs.asdict(field.attrs), **attrs},
    }
    if field.path is not None:
        data["path"] = field.path
    return parse_field(data, source=source, storage_type=storage)


def build_plan(
    *,
    source_schema: IndexSchema,
    source_stats: IndexStats,
    key_sample: Sequence[str],
    capabilities: ServerCapabilities,
    patch: SchemaPatch,
    other_indexes: Sequence[OtherIndex] = (),
    vector_samples: Mapping[str, np.ndarray] | None = None,
    previous_encodings: Mapping[str, Encoding] | None = None,
    force: bool = False,
    encodings: Mapping[str, Encoding] | None = None,
    created_at: str | None = None,
    mode: str | None = None,
    physical_index: str | None = None,
    aliases: Sequence[str] = (),
    aliases_listed: bool = False,
    unreported: Sequence[UnreportedAttribute] = (),
    keep_shadow_field: bool = False,
    memory_room: MemoryRoom | None = None,
    wait_for_new_encoding: bool | None = None,
    online_reencode_unavailable: str | None = None,
) -> MigrationPlan:
    """Merge ``patch`` into the source schema and classify every change.

    ``mode`` is ``online``, ``drop_recreate`` or None: online where no document needs
    rewriting, and for re-encoding hash vectors where the shadow vectors and index fit
    in ``memory_room`` (the server's memory; None: not known, so drop_recreate); else
    drop_recreate. ``wait_for_new_encoding`` (an online re-encoding waits after its
    cut-over for the application's first new-encoding write) defaults to True for
    ``mode="online"``, False where the planner chose online.
    ``online_reencode_unavailable``: why this deployment cannot re-encode online (a
    Redis Cluster): the planner then picks drop_recreate, and ``mode="online"`` with a
    re-encoding is blocked with that reason.

    ``physical_index`` is the index behind the source name when that name is an alias.
    ``aliases`` are the source's user aliases, moved to the target; ``aliases_listed``
    says the server listed them all (else only those named).

    ``vector_samples`` maps a source vector field name to stored vectors (decoded to
    float) used to calibrate integer encodings; ``previous_encodings`` maps a field
    to the encoding that produced its current integer values (needed to go back to
    float). ``force`` lifts the blocks marked forceable. ``encodings`` (by source field)
    are used instead of calibrating: re-deriving a plan from its own content.

    ``unreported`` lists the source's vector parameters the server did not report;
    ``source_schema`` holds their recorded values where a run recorded them (else None,
    the default). The plan keeps the list and says what the target gets for each.
    """
    source = source_schema.canonical()
    changes = patch.changes
    b = _Builder(source)
    bad = _contradictions(changes, b)
    where = "schema patch"

    for name in dict.fromkeys(changes.remove_fields):
        if name in bad:
            continue
        if name not in b.fields:
            b.block(
                f"remove field {name!r}",
                f"index {source.name!r} has no field {name!r}",
                "check the field names with `redismigrate index info`",
            )
            continue
        del b.fields[name]
        del b.origin[name]

    for rename in changes.rename_fields:
        _apply_rename(b, rename, changes, bad)

    for update in changes.update_fields:
        if update.name in bad:
            continue
        current = b.find(update.name)
        if current is None:
            b.block(
                f"update field {update.name!r}",
                f"index {source.name!r} has no field {update.name!r}",
                "check the field names with `redismigrate index info`",
            )
            continue
        _apply_update(b, current, update.type, update.path, update.all_attrs, where)

    for raw in changes.add_fields:
        name = str(raw.get("name"))
        if name in bad:
            continue
        field = parse_field(raw, source=f"{where}: add field {name!r}", storage_type=b.storage)
        if isinstance(field, VectorField):
            b.block(
                f"add vector field {name!r}",
                "every document would need a vector for it, which a schema change cannot make",
                "write the vectors into the documents first, then add the field",
            )
            continue
        if name in b.fields:
            b.block(
                f"add field {name!r}",
                f"index {source.name!r} already has a field {name!r}",
                "use update_fields to change it, or remove it in the same patch to replace it",
            )
            continue
        b.fields[name] = field

    index = _apply_index_changes(b, changes, other_indexes)
    target = IndexSchema(index=index, fields=list(b.fields.values())).canonical()
    try:
        validate_schema(target, source="merged target schema")
    except SchemaError as exc:
        b.block("merged schema", str(exc), "change the patch so the result is a valid index")

    for problem in capabilities.problems_with(target):
        b.block(
            "target schema",
            f"this server cannot take it: {problem}",
            "upgrade the server (Redis 8.0 for INT8/UINT8, 8.2 for SVS-VAMANA) or pick "
            "a supported setting",
        )

    vector_changes = _vector_changes(
        b,
        target,
        other_indexes,
        vector_samples or {},
        previous_encodings or {},
        encodings or {},
        source_stats,
        force,
    )

    prefix_change = None
    if index.prefixes != source.prefixes and len(source.prefixes) == 1:
        prefix_change = PrefixChange(old=source.prefixes[0], new=index.prefixes[0])
    renames = RenameOperations(
        rename_index=index.name if index.name != source.name else None,
        change_prefix=prefix_change,
        rename_fields=b.renames,
    )
    rewrites = [
        what
        for what, present in (
            ("field renames", bool(renames.rename_fields)),
            ("a prefix change", renames.change_prefix is not None),
            ("vector re-encoding", any(vc.rewrite_documents for vc in vector_changes)),
        )
        if present
    ]
    if mode is not None and mode not in MODES:
        raise SchemaError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    chosen: Mode = DropRecreate()
    mode_note = None
    if mode is None and rewrites == ["vector re-encoding"] and online_reencode_unavailable:
        mode = "drop_recreate"
        mode_note = (
            "Mode drop_recreate (chosen by the planner): online re-encoding cannot be had "
            f"here: {online_reencode_unavailable}"
        )
    elif mode is None and rewrites == ["vector re-encoding"]:
        mode, mode_note = _default_reencode_mode(
            source,
            target,
            source_stats,
            vector_changes,
            renames,
            key_sample,
            memory_room,
            keep_shadow_field=keep_shadow_field,
        )
        if wait_for_new_encoding is None:
            wait_for_new_encoding = False
    if mode == "online" or (mode is None and not rewrites):
        # hash vectors are re-encoded into shadow fields; renames and moves cannot be
        others = [what for what in rewrites if what != "vector re-encoding"]
        if others:
            b.block(
                "online mode",
                f"{' and '.join(others)} rewrite documents, which a shadow index cannot do "
                "while the live one serves",
                "use --mode drop_recreate, or split the migration: the rest online, the "
                "renames or the prefix change with drop_recreate",
            )
        reencode, taken = shadow_reencode_for(
            source,
            vector_changes,
            keep_shadow_field=keep_shadow_field,
            wait_for_new_encoding=wait_for_new_encoding is not False,
        )
        for problem, remedy in taken:
            b.block("online re-encoding", problem, remedy)
        if reencode is not None and online_reencode_unavailable:
            b.block(
                "online re-encoding",
                online_reencode_unavailable,
                "use --mode drop_recreate",
            )
        chosen = Online(
            shadow_index=shadow_name(target.name, other_indexes, physical_index or source.name),
            previous_physical_index=physical_index or source.name,
            reencode=reencode,
        )
    blocked = [x for x in b.blocked if not (force and x.forceable)]
    warnings = _warnings(
        b,
        source,
        target,
        source_stats,
        renames,
        vector_changes,
        force,
        isinstance(chosen, Online),
        key_sample,
        shadow_fields(chosen),
        finish=isinstance(chosen, Online)
        and chosen.reencode is not None
        and chosen.reencode.variant == "finish",
    )
    moved = sorted(set(aliases) - {source.name, target.name})
    warnings.extend(alias_warnings(source.name, moved, aliases_listed, isinstance(chosen, Online)))
    warnings.extend(unreported_warnings(b, source, target, unreported))
    if mode_note:
        warnings.insert(0, mode_note)
    if isinstance(chosen, Online) and chosen.reencode is not None:
        peak = model_memory(
            source=source,
            target=target,
            stats=source_stats,
            vector_changes=vector_changes,
            renames=renames,
            online=True,
            key_sample=key_sample,
            shadow_fields=shadow_fields(chosen),
            finish=chosen.reencode.variant == "finish",
        )
        vectors = peak.shadow_documents
        warnings.extend(
            shadow_warnings(chosen.reencode, vector_changes, vectors, peak.peak_growth - vectors)
        )
    plan = MigrationPlan(
        mode=chosen,
        created_at=created_at or now_iso(),
        source=SourceSnapshot(
            index_name=source.name,
            physical_index=physical_index if physical_index != source.name else None,
            aliases=moved,
            schema_hash=schema_hash(source),
            schema_snapshot=source,
            stats_snapshot=source_stats,
            keyspace=Keyspace(
                storage_type=source.storage_type,
                prefixes=source.prefixes,
                key_separator=source.index.key_separator,
                key_sample=list(key_sample),
            ),
            server=capabilities,
            captured_at=created_at or now_iso(),
            unreported=list(unreported),
        ),
        requested_changes=changes,
        merged_target_schema=target,
        diff_classification=DiffClassification(supported=not blocked, blocked_reasons=blocked),
        rename_operations=renames,
        vector_changes=vector_changes,
        warnings=warnings,
    )
    return seal_plan(plan)


_QUALITY_PARAMS = ("ef_runtime", "epsilon", "search_window_size")


def _param_text(name: str, value: Any) -> str:
    if value is None:
        return f"no {name}"
    return f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"


def unreported_warnings(
    b: _Builder,
    source: IndexSchema,
    target: IndexSchema,
    unreported: Sequence[UnreportedAttribute],
) -> list[str]:
    """One line per vector field with parameters the server does not report: the value
    the target gets for each, and where it comes from."""
    by_field: dict[str, list[UnreportedAttribute]] = {}
    for item in unreported:
        by_field.setdefault(item.field, []).append(item)
    out: list[str] = []
    for field_name, items in by_field.items():
        before = source.field(field_name)
        after_name = next((n for n, o in b.origin.items() if o == field_name), None)
        after = target.field(after_name) if after_name is not None else None
        if not isinstance(before, VectorField) or not isinstance(after, VectorField):
            continue
        if after.attrs.algorithm != before.attrs.algorithm:
            continue  # the parameters of another algorithm: the change sets them
        changed: list[str] = []
        kept: list[str] = []
        unknown: list[UnreportedAttribute] = []
        for item in items:
            old = getattr(before.attrs, item.attribute)
            new = getattr(after.attrs, item.attribute)
            if new != old:
                changed.append(_param_text(item.attribute, new))
            elif item.recorded is not None:
                by = item.recorded_by or "an earlier run"
                kept.append(f"{_param_text(item.attribute, new)} (recorded by {by})")
            else:
                unknown.append(item)
        names = ", ".join(i.attribute for i in items)
        parts = [
            f"Vector field {after.name!r}: the server does not report {names} (validation "
            f"cannot check {'it' if len(items) == 1 else 'them'})"
        ]
        if changed:
            parts.append(f"the new index gets {', '.join(changed)}, as this change sets")
        if kept:
            parts.append(f"kept as an earlier redismigrate run made it: {', '.join(kept)}")
        if unknown:
            values = ", ".join(
                _param_text(i.attribute, getattr(after.attrs, i.attribute)) for i in unknown
            )
            text = f"unknown, so the new index gets the server's defaults: {values}"
            if any(i.attribute in _QUALITY_PARAMS for i in unknown):
                text += "; if the index was made with other values, search quality may change"
            example = unknown[0].attribute
            text += (
                f"; a patch can set {'it' if len(unknown) == 1 else 'them'} (update_fields: "
                f"[{{name: {after.name}, attrs: {{{example}: ...}}}}])"
            )
            parts.append(text)
        out.append("; ".join(parts))
    return out


def alias_warnings(name: str, aliases: Sequence[str], listed: bool, online: bool) -> list[str]:
    """What the plan says about the aliases it moves, and those it cannot see."""
    out: list[str] = []
    if aliases:
        shown = ", ".join(repr(a) for a in aliases)
        when = (
            "in the same step as the name"
            if online
            else "once it is indexed (until then they answer 'no such index', like the name)"
        )
        out.append(f"Aliases {shown} of {name!r} are moved to the new index {when}")
    if not listed:
        out.append(
            "This server cannot list aliases (FT.ALIASLIST needs search 8.10): an alias of "
            f"{name!r} not named with --alias cannot be seen, and dropping the old index "
            "removes it for good"
        )
    return out


def shadow_name(name: str, others: Sequence[OtherIndex], physical: str) -> str:
    """``<name>__rm<n>``: a physical index name no index uses yet."""
    pattern = re.compile(rf"^{re.escape(name)}__rm(\d+)$")
    taken = [o.name for o in others] + [physical]
    numbers = [int(m.group(1)) for t in taken if (m := pattern.match(t))]
    return f"{name}__rm{max(numbers, default=0) + 1}"


def _apply_rename(b: _Builder, rename: FieldRename, changes: SchemaChanges, bad: set[str]) -> None:
    old, new = rename.old_name, rename.new_name
    if old in bad:
        return
    change = f"rename field {old!r} to {new!r}"
    field = b.fields.get(old)
    if field is None:
        b.block(
            change,
            f"index {b.source.name!r} has no field {old!r}",
            "check the field names with `redismigrate index info`",
        )
        return
    if new in b.fields or b.source.field(new) is not None:
        b.block(
            change,
            f"a field named {new!r} already exists; renaming onto it would overwrite its data",
            "rename to a free name, or remove the other field in an earlier migration",
        )
        return
    if any(str(raw.get("name")) == new for raw in changes.add_fields):
        b.block(
            change,
            f"the same patch also adds a field named {new!r}",
            "keep one change per field in the patch",
        )
        return
    if b.storage == "json":
        old_path = field.path or default_json_path(old)
        if old_path != default_json_path(old):
            b.block(
                change,
                f"its JSON path {old_path!r} is not the plain top-level path of the field",
                "rename the attribute only: update its path, or move the data yourself",
            )
            return
        new_path = default_json_path(new)
        renamed: Field = msgspec.structs.replace(field, name=new, path=new_path)
    else:
        old_path = field.path or old
        new_path = new
        renamed = msgspec.structs.replace(field, name=new, path=None)
    b.fields = {(new if k == old else k): (renamed if k == old else v) for k, v in b.fields.items()}
    b.origin = {(new if k == old else k): v for k, v in b.origin.items()}
    b.renames.append(
        FieldRenameOp(old_name=old, new_name=new, old_path=old_path, new_path=new_path)
    )


def _apply_update(
    b: _Builder,
    current: str,
    new_type: str | None,
    new_path: str | None,
    attrs: Mapping[str, Any],
    where: str,
) -> None:
    field = b.fields[current]
    change = f"update field {current!r}"
    if new_type is not None and new_type.lower() != type_name(field):
        new_type = new_type.lower()
        if isinstance(field, VectorField) or new_type == "vector":
            b.block(
                change,
                f"changing a field between {type_name(field)} and {new_type} needs new data",
                "add a new field with the data it needs, then remove the old one",
            )
            return
        data: dict[str, Any] = {"name": field.name, "type": new_type, "attrs": dict(attrs)}
        if field.path is not None:
            data["path"] = field.path
        b.fields[current] = parse_field(data, source=f"{where}: {change}", storage_type=b.storage)
    else:
        if isinstance(field, VectorField) and "dims" in attrs and attrs["dims"] != field.attrs.dims:
            b.block(
                change,
                f"changing vector dimensions ({field.attrs.dims} to {attrs['dims']}) needs "
                "re-embedding every document",
                "re-embed with the new model into a new field or index, then switch over",
            )
            return
        if isinstance(field, VectorField):
            attrs = _without_foreign_vector_params(field, attrs)
        updated = _merge_attrs(field, attrs, b.storage, f"{where}: {change}")
        b.fields[current] = updated
    if new_path is not None:
        b.fields[current] = msgspec.structs.replace(b.fields[current], path=new_path)


_VECTOR_PARAMS = {
    "flat": ("block_size", "initial_cap"),
    "hnsw": ("m", "ef_construction", "ef_runtime", "epsilon", "initial_cap"),
    "svs-vamana": (
        "graph_max_degree",
        "construction_window_size",
        "search_window_size",
        "compression",
        "reduce",
        "training_threshold",
        "epsilon",
    ),
}


def _without_foreign_vector_params(field: VectorField, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` plus a reset of the old algorithm's parameters the new one does not take."""
    new_algorithm = str(attrs.get("algorithm", field.attrs.algorithm)).lower()
    if new_algorithm == field.attrs.algorithm or new_algorithm not in _VECTOR_PARAMS:
        return dict(attrs)
    keep = set(_VECTOR_PARAMS[new_algorithm])
    cleared = {
        p: None
        for params in _VECTOR_PARAMS.values()
        for p in params
        if p not in keep and p not in attrs
    }
    return {**cleared, **attrs}


def _apply_index_changes(
    b: _Builder, changes: SchemaChanges, other_indexes: Sequence[OtherIndex]
) -> Any:
    change = changes.index
    index = b.source.index
    if change.name is not None and change.name != index.name:
        clash = next((o for o in other_indexes if o.name == change.name), None)
        if clash is not None:
            b.block(
                f"rename index to {change.name!r}",
                f"an index named {change.name!r} already exists",
                "pick another name, or drop the other index first",
            )
        else:
            index = msgspec.structs.replace(index, name=change.name)
    if change.storage_type is not None and change.storage_type.lower() != index.storage_type:
        b.block(
            f"change storage type to {change.storage_type}",
            "hash and JSON documents are stored differently; the index cannot switch",
            "export the documents, transform them and load them into a new index",
        )
    if change.key_separator is not None:
        index = msgspec.structs.replace(index, key_separator=change.key_separator)
    if change.prefix is not None:
        new = [change.prefix] if isinstance(change.prefix, str) else list(change.prefix)
        if new != index.prefixes:
            if len(index.prefixes) != 1 or len(new) != 1:
                b.block(
                    f"change prefix to {change.prefix!r}",
                    "moving keys is defined for one old and one new prefix only; this "
                    f"index has {len(index.prefixes)} prefix(es)",
                    "migrate to a single prefix first, or move the keys yourself",
                )
            else:
                index = msgspec.structs.replace(index, prefix=new[0])
    if change.options:
        try:
            options = msgspec.convert(
                {**msgspec.structs.asdict(index.options), **change.options}, IndexOptions
            )
        except msgspec.ValidationError as exc:
            raise SchemaError(f"schema patch: changes.index.options: {exc}") from None
        index = msgspec.structs.replace(index, options=options)
        problems = index_problems(index)
        if problems:
            raise SchemaError("schema patch: changes.index.options: " + "; ".join(problems))
    return index


def _vector_changes(
    b: _Builder,
    target: IndexSchema,
    other_indexes: Sequence[OtherIndex],
    samples: Mapping[str, np.ndarray],
    previous: Mapping[str, Encoding],
    given: Mapping[str, Encoding],
    stats: IndexStats,
    force: bool,
) -> list[VectorChange]:
    out: list[VectorChange] = []
    for field in target.vector_fields:
        origin = b.origin.get(field.name)
        source_field = b.source.field(origin) if origin else None
        if not isinstance(source_field, VectorField):
            continue
        src, tgt = source_field.attrs.datatype, field.attrs.datatype
        if src == tgt:
            continue
        change = f"re-encode {field.name!r} from {src} to {tgt}"
        rewrite = b.storage == "hash"
        if b.storage == "json" and tgt in INTEGER_TYPES:
            b.block(
                change,
                "JSON vectors are read as stored numbers; int8/uint8 would need every array "
                "rewritten as integers, which redismigrate does not do yet",
                "use float16 or bfloat16 for JSON indexes, or store the vectors in hashes",
            )
            continue
        # re-deriving a plan (``given``) keeps its encoding: the samples are not in it
        encoding: Encoding | None = given.get(source_field.name)
        try:
            sample = samples.get(source_field.name)
            if sample is None or len(sample) == 0:
                sample = np.zeros((0, field.attrs.dims), dtype=np.float32)
            if encoding is None:
                encoding = calibrate(
                    src,
                    tgt,
                    field.attrs.distance_metric,
                    sample,
                    previous=previous.get(source_field.name),
                )
        except ReEncodingRefused as exc:
            b.block(
                change,
                str(exc).rstrip("."),
                "plan with the earlier plan or report that "
                "holds the scale (--previous-plan), or restore the originals from the backup",
            )
            continue
        except ValueError as exc:
            b.block(change, str(exc).rstrip("."), "load documents first, or pick a float type")
            continue
        if tgt == "uint8":
            policy = uint8_policy(field.attrs.distance_metric)
            if policy == "blocked":
                b.block(
                    change,
                    "uint8 needs an offset, and an offset changes inner-product rankings",
                    "use int8 (symmetric scale) for IP, or plan with --force to accept it",
                    forceable=True,
                )
            elif policy == "warn":
                b.warnings.append(
                    f"{field.name!r}: uint8 with COSINE shifts every vector by the offset, "
                    "which bends angles; int8 keeps them"
                )
        if rewrite:
            for other in other_indexes:
                if other.name == b.source.name or other.storage_type != "hash":
                    continue
                pairs = prefixes_overlap(b.source.prefixes, other.prefixes)
                if pairs:
                    shown = ", ".join(f"{x!r} / {y!r}" for x, y in pairs)
                    b.block(
                        change,
                        f"index {other.name!r} also covers these keys (prefixes {shown}) and "
                        f"expects {src} vectors; it would drop or fail those documents",
                        "write the new vectors to new keys or a new field and move every "
                        "index that reads them together",
                    )
        out.append(
            VectorChange(
                field=field.name,
                source_field=source_field.name,
                dims=field.attrs.dims,
                source_datatype=src,
                target_datatype=tgt,
                distance_metric=field.attrs.distance_metric,
                rewrite_documents=rewrite,
                encoding=encoding,
            )
        )
    return out


def _default_reencode_mode(
    source: IndexSchema,
    target: IndexSchema,
    stats: IndexStats,
    vector_changes: Sequence[VectorChange],
    renames: RenameOperations,
    key_sample: Sequence[str],
    room: MemoryRoom | None,
    *,
    keep_shadow_field: bool,
) -> tuple[str, str]:
    """The mode the planner picks for a plan whose only document rewrite is re-encoding
    hash vectors, and the sentence saying why: online where shadow fields can be had and
    their peak fits in the server's free memory, else drop_recreate."""
    reencode, taken = shadow_reencode_for(
        source, vector_changes, keep_shadow_field=keep_shadow_field
    )
    if taken or reencode is None:
        why = taken[0][0] if taken else "no hash vector to shadow"
        return "drop_recreate", (
            f"Mode drop_recreate (chosen by the planner): online re-encoding cannot be had "
            f"here: {why}"
        )
    growth = model_memory(
        source=source,
        target=target,
        stats=stats,
        vector_changes=vector_changes,
        renames=renames,
        online=True,
        key_sample=key_sample,
        shadow_fields={f.field: f.shadow_field for f in reencode.fields},
        finish=reencode.variant == "finish",
    ).peak_growth
    if room is None:
        return "drop_recreate", (
            "Mode drop_recreate (chosen by the planner): the server's free memory was not "
            "read, so online re-encoding (zero downtime, about "
            f"{mb(growth)} more at its peak) was not chosen; --mode online asks for it"
        )
    fits, why = room.fits(growth)
    if not fits:
        return "drop_recreate", (
            f"Mode drop_recreate (chosen by the planner): online re-encoding would need "
            f"about {mb(growth)} more at its peak, and {why}: the index is dropped and "
            "rebuilt instead (queries fail until it is built); free memory or raise "
            "maxmemory and plan again for zero downtime"
        )
    return "online", (
        f"Mode online (chosen by the planner): zero downtime; about {mb(growth)} more at "
        f"the peak, {why}. It takes longer than --mode drop_recreate (every vector is "
        "written twice and two indexes are built) and finishes straight after the "
        "cut-over; plan with --mode online to have it wait for the application's first "
        "new-encoding write, or --mode drop_recreate for a shorter run with downtime"
    )


def shadow_fields(mode: Mode) -> dict[str, str] | None:
    """The hash field an online run writes each re-encoded vector into, by field."""
    if isinstance(mode, Online) and mode.reencode is not None:
        return {f.field: f.shadow_field for f in mode.reencode.fields}
    return None


def _warnings(
    b: _Builder,
    source: IndexSchema,
    target: IndexSchema,
    stats: IndexStats,
    renames: RenameOperations,
    vector_changes: Sequence[VectorChange],
    force: bool,
    online: bool,
    key_sample: Sequence[str] = (),
    shadow: Mapping[str, str] | None = None,
    finish: bool = False,
) -> list[str]:
    memory = model_memory(
        source=source,
        target=target,
        stats=stats,
        vector_changes=vector_changes,
        renames=renames,
        online=online,
        key_sample=key_sample,
        shadow_fields=shadow,
        finish=finish,
    )
    if online:
        out = [
            "No downtime: the target is built as a second index over the same keys while the "
            "current one serves, then the name moves to it in one step; until then the "
            f"server holds both (about {mb(memory.peak_growth)} more at the peak)"
        ]
    else:
        out = [
            "Index downtime is required: from the drop until the new index is built, queries "
            "fail and writes are not indexed (pause reads and writes)"
        ]
    docs = stats.num_docs + stats.hash_indexing_failures
    for vc in vector_changes:
        if vc.lossy:
            kept = (
                "the original bytes are kept in the backup (the originals are rewritten "
                "after the cut-over, each backed up first)"
                if vc.rewrite_documents and online and finish
                else "the documents keep the original bytes (the new vectors go to a shadow field)"
                if vc.rewrite_documents and online
                else "the original bytes are kept in the backup"
                if vc.rewrite_documents
                else "the documents keep their values, only the index holds the new type"
            )
            out.append(
                f"Re-encoding {vc.field!r} {vc.source_datatype} -> {vc.target_datatype} is "
                f"lossy; {kept}"
            )
        if not vc.rewrite_documents:
            out.append(
                f"{vc.field!r} is stored as JSON numbers: the server re-reads them as "
                f"{vc.target_datatype}; documents are not rewritten"
            )
    if memory.fields and not (online and any(vc.rewrite_documents for vc in vector_changes)):
        out.append(memory_sentence(memory))  # online re-encoding: shadow_warnings says it
    if renames.rename_fields:
        out.append(
            f"Renaming {len(renames.rename_fields)} field(s) rewrites every document (~{docs:,})"
        )
    if renames.change_prefix is not None:
        out.append(
            f"Changing the prefix renames every key (~{docs:,}) from "
            f"{renames.change_prefix.old!r} to {renames.change_prefix.new!r}"
        )
    if force:
        forced = [x for x in b.blocked if x.forceable]
        out.extend(f"Forced: {x.change}: {x.reason}" for x in forced)
    out.extend(b.warnings)
    if source.canonical() == target.canonical():
        out.append("The patch changes nothing: the target equals the live schema")
    return out


def plan_hash(plan: MigrationPlan) -> str:
    """A stable hash of a plan's whole content (a backup is tied to exactly one plan)."""
    return "sha256:" + hashlib.sha256(canonical_json(plan)).hexdigest()


def plan_content_hash(plan: MigrationPlan) -> str:
    """The sha256 of ``canonical_json`` of a plan without its ``content_hash``."""
    unsealed = msgspec.structs.replace(plan, content_hash="")
    return "sha256:" + hashlib.sha256(canonical_json(unsealed)).hexdigest()


def seal_plan(plan: MigrationPlan) -> MigrationPlan:
    """``plan`` carrying the hash of its content (apply refuses a plan edited since)."""
    return msgspec.structs.replace(plan, content_hash=plan_content_hash(plan))
