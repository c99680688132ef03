"""Online re-encoding of hash vectors through shadow fields: the pure parts.

An online run leaves the field the application writes (``embedding``, float32) as it
is and writes each document's re-encoded vector into a shadow field beside it
(``embedding__rm``, float16). The shadow index is the target schema with that vector
attribute read from the shadow field under its public name (``embedding__rm AS
embedding``), so queries keep naming ``embedding``. This module names those fields,
derives the shadow schema, words the plan's warnings, and keeps the run's progress
header (the stage it reached) in the backup directory.

The stages, in order (``STAGES``): change capture started; backfill (every document's
shadow written); the shadow index built; mirroring (every application write to a
covered key re-encoded into the shadow) and, with ``--postpone-cut-over``, waiting for
the operator; the cut-over (the name moves to the shadow index in one MULTI/EXEC);
switched (the writes seen up to the switch are mirrored). The ``keep_shadow_field``
variant ends there: the index keeps reading the shadow field. The ``finish`` variant
(the default) goes on: it waits until the application writes the new encoding into
the original field (``awaiting_new_encoding``), rewrites every original still in the
old encoding in place (``rewriting``, each original backed up first), builds the final
index on the original field (``final_index``), moves the name to it in a second
MULTI/EXEC (``final_switch``) and removes the shadow fields (``removing_shadows``):
the documents then look as after a drop_recreate migration.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from redismigrate.backup import backup_paths
from redismigrate.errors import BadInputError
from redismigrate.files import write_document
from redismigrate.schema import DATATYPE_BYTES, IndexSchema, Model, VectorField

if TYPE_CHECKING:
    from redismigrate.plan import VectorChange

# the shadow field of a hash field: ``<field>__rm`` (reserved: never an application field)
SHADOW_SUFFIX = "__rm"
Variant = Literal["finish", "keep_shadow_field"]
NOT_YET_BUILT: tuple[str, ...] = ()
# where a run waiting for a postponed cut-over looks for the operator's go
CUT_OVER_KEY_PREFIX = "redismigrate:cut-over:"
CUT_OVER_FLAG_SUFFIX = ".cut-over"
PROGRESS_FORMAT = "redismigrate-online-progress"
PROGRESS_VERSION = 1
PROGRESS_SUFFIX = ".online.json"
PROGRESS_CHECKSUM = "checksum"

Stage = Literal[
    "capture_started",
    "backfill",
    "shadow_index",
    "mirroring",
    "awaiting_cut_over",
    "cut_over",
    "switched",
    "awaiting_new_encoding",
    "rewriting",
    "final_index",
    "final_switch",
    "removing_shadows",
    "done",
]
STAGES: tuple[Stage, ...] = (
    "capture_started",
    "backfill",
    "shadow_index",
    "mirroring",
    "awaiting_cut_over",
    "cut_over",
    "switched",
    "awaiting_new_encoding",
    "rewriting",
    "final_index",
    "final_switch",
    "removing_shadows",
    "done",
)


def shadow_field_name(document_field: str) -> str:
    return document_field + SHADOW_SUFFIX


class ShadowVector(Model, frozen=True, kw_only=True):
    """One re-encoded hash vector field of an online run."""

    field: str  # the attribute: its name in queries, in the source and the target
    source_field: str  # its name in the source schema (``vector_changes[].source_field``)
    document_field: str  # the hash field the application writes: left as it is
    shadow_field: str  # ``<document_field>__rm``: the re-encoded vector the index reads


class ShadowReencode(Model, frozen=True, kw_only=True):
    """How an online plan re-encodes hash vectors: into shadow fields.

    ``variant`` says where the run ends: ``finish`` rewrites the originals in place and
    ends on an index over them with no shadow field left; ``keep_shadow_field`` stops
    after the cut-over, the index reading the shadow field from then on.
    """

    variant: Variant
    fields: list[ShadowVector]
    # finish: after the cut-over, wait for the application's first write in the new
    # encoding before rewriting (a plan made with --mode online); a plan where the
    # planner chose online goes on at once, as drop_recreate would
    wait_for_new_encoding: bool = True


def shadow_reencode_for(
    source: IndexSchema,
    vector_changes: Sequence[VectorChange],
    *,
    keep_shadow_field: bool = False,
    wait_for_new_encoding: bool = True,
) -> tuple[ShadowReencode | None, list[tuple[str, str]]]:
    """The shadow fields for the hash vectors ``vector_changes`` rewrite, and why they
    cannot be had, as (problem, remedy): a field of the source already uses a shadow
    field's name; the ``finish`` variant for two encodings of one width (no write can be
    told apart by its length)."""
    taken = {f.path or f.name for f in source.fields} | {f.name for f in source.fields}
    fields: list[ShadowVector] = []
    problems: list[tuple[str, str]] = []
    for vc in vector_changes:
        if not vc.rewrite_documents:
            continue
        same_width = DATATYPE_BYTES[vc.source_datatype] == DATATYPE_BYTES[vc.target_datatype]
        if same_width and not keep_shadow_field:
            problems.append(
                (
                    f"{vc.field!r}: {vc.source_datatype} and {vc.target_datatype} vectors have "
                    "the same byte length, so the run cannot tell when the application writes "
                    "the new encoding into the original field",
                    "use --keep-shadow-field (the index keeps reading the shadow field), or "
                    "--mode drop_recreate",
                )
            )
        field = source.field(vc.source_field)
        document_field = (field.path or field.name) if field is not None else vc.source_field
        shadow = shadow_field_name(document_field)
        if shadow in taken:
            problems.append(
                (
                    f"the shadow field {shadow!r} of {vc.field!r} is a field of the index already",
                    "rename that field first, or use --mode drop_recreate",
                )
            )
        fields.append(
            ShadowVector(
                field=vc.field,
                source_field=vc.source_field,
                document_field=document_field,
                shadow_field=shadow,
            )
        )
    if not fields:
        return None, problems
    variant: Variant = "keep_shadow_field" if keep_shadow_field else "finish"
    wait = wait_for_new_encoding or keep_shadow_field  # keep_shadow_field: nothing to wait for
    return ShadowReencode(variant=variant, fields=fields, wait_for_new_encoding=wait), problems


def shadow_schema(target: IndexSchema, reencode: ShadowReencode | None) -> IndexSchema:
    """``target`` with each re-encoded vector attribute read from its shadow field
    (``<field>__rm AS <field>``); ``target`` itself for an index-only online plan."""
    if reencode is None:
        return target
    paths = {s.field: s.shadow_field for s in reencode.fields}
    fields = [
        msgspec.structs.replace(f, path=paths[f.name])
        if isinstance(f, VectorField) and f.name in paths
        else f
        for f in target.fields
    ]
    return msgspec.structs.replace(target, fields=fields)


def _mb(n: float) -> str:
    return f"{n / 1_048_576:,.1f} MB"


def shadow_warnings(
    reencode: ShadowReencode,
    vector_changes: Sequence[VectorChange],
    vectors: int,
    shadow_index_bytes: int,
) -> list[str]:
    """What a reviewer of an online re-encoding plan needs to know; ``vectors`` and
    ``shadow_index_bytes`` are the memory model's figures (redismigrate/memory.py) for
    the shadow vectors in the documents and the shadow index."""
    by_field = {vc.field: vc for vc in vector_changes}
    finish = reencode.variant == "finish"
    out: list[str] = []
    for shadow in reencode.fields:
        vc = by_field[shadow.field]
        out.append(
            f"Online re-encoding ({reencode.variant}): {shadow.document_field!r} is left as "
            f"it is ({vc.source_datatype}) until the cut-over; every document gets its "
            f"{vc.target_datatype} vector in the shadow field {shadow.shadow_field!r}, which "
            f"the new index reads as {shadow.field!r} (queries keep the name). Every write "
            "the application makes during the run is mirrored into it"
        )
    targets = ", ".join(sorted({by_field[s.field].target_datatype for s in reencode.fields}))
    if finish:
        out.append(
            f"Memory at the peak: about {_mb(vectors + shadow_index_bytes)} more (shadow "
            f"vectors {_mb(vectors)}, shadow index {_mb(shadow_index_bytes)}); after the "
            "cut-over the originals are rewritten in the new encoding (each backed up "
            "first, for rollback), a final index on them takes the name in a second switch, "
            "and the shadow fields are removed: the end frees the old index, the shadow "
            "vectors and the old encoding"
        )
        out.append(
            "At the cut-over the application must switch too: KNN query vectors in "
            f"{targets} (a query in the old encoding is refused with a blob size error: retry "
            "it in the new one), and vectors written in the new encoding into the original "
            "field; "
            + (
                "the run waits for the first such write (or a second `redismigrate "
                "cut-over`) before it rewrites the rest"
                if reencode.wait_for_new_encoding
                else "the run does not wait for such a write: it rewrites the rest straight "
                "after the cut-over (plan with --mode online to have it wait)"
            )
            + "; use --postpone-cut-over and `redismigrate cut-over` to choose the moment"
        )
    else:
        out.append(
            f"Memory at the peak: about {_mb(vectors + shadow_index_bytes)} more (shadow "
            f"vectors {_mb(vectors)}, shadow index {_mb(shadow_index_bytes)}); the end frees "
            "only the old index: both encodings stay in the documents in this variant"
        )
        out.append(
            "At the cut-over the application must switch too: KNN query vectors in "
            f"{targets} (a query in the old encoding is refused with a blob size error: retry "
            "it in the new one), and new vectors written in the new encoding into the shadow "
            "field (the run stops mirroring at its end); use --postpone-cut-over and "
            "`redismigrate cut-over` to choose the moment"
        )
    if NOT_YET_BUILT:
        out.append("Not built yet (a later release): " + "; ".join(NOT_YET_BUILT))
    return out


# --------------------------------------------------------------------------- the run


def cut_over_key(index_name: str) -> str:
    """The key `redismigrate cut-over --index NAME` sets for a run waiting on NAME."""
    return CUT_OVER_KEY_PREFIX + index_name


def _file_stem(backup_dir: Path, index_name: str) -> Path:
    return backup_paths(backup_dir, index_name).prefix


def progress_path(backup_dir: str | os.PathLike[str], index_name: str) -> Path:
    stem = _file_stem(Path(backup_dir), index_name)
    return stem.with_name(stem.name + PROGRESS_SUFFIX)


def cut_over_flag_path(backup_dir: str | os.PathLike[str], index_name: str) -> Path:
    """The file whose appearance releases a postponed cut-over (besides the Redis key)."""
    stem = _file_stem(Path(backup_dir), index_name)
    return stem.with_name(stem.name + CUT_OVER_FLAG_SUFFIX)


class ShadowCounts(Model, frozen=True, kw_only=True):
    """Documents each stage handled (added up over the runs of one migration)."""

    backfilled: int = 0  # shadow vectors the backfill wrote
    swept: int = 0  # shadow vectors a resumed run's sweep found wrong and fixed
    mirrored: int = 0  # application writes re-encoded into the shadow
    removed: int = 0  # shadow vectors removed: the original was removed
    skipped: int = 0  # guarded writes left: changed again meanwhile (done again later)
    missing: int = 0  # documents deleted before their shadow was written: not recreated
    malformed: int = 0  # originals of another byte length: no shadow (as the source)
    rewritten: int = 0  # originals rewritten in place in the new encoding (finish)
    shadows_removed: int = 0  # shadow fields removed at the end (finish)

    def plus(self, other: ShadowCounts) -> ShadowCounts:
        return ShadowCounts(
            **{name: getattr(self, name) + getattr(other, name) for name in self.__struct_fields__}
        )


class ShadowReport(Model, frozen=True, kw_only=True):
    """What an online re-encoding run did: the migration report's ``online_reencode``."""

    variant: str  # keep_shadow_field: the index reads the shadow field from the cut-over on
    stage: str  # the stage the run reached (``done`` when it finished)
    shadow_index: str
    shadow_fields: list[str]
    capture: str  # "notifications", or "sweep: <why>" when every key was compared instead
    counts: ShadowCounts
    writes_seen: int = 0  # notifications of the application's writes (this run)
    gaps_swept: int = 0  # full sweeps that closed a gap (a resume, a dropped subscription)
    lag_at_cut_over: int | None = None  # keys written but not yet mirrored at the switch
    cut_over: str = "automatic"  # or "postponed: <what released it>"
    waited_for_cut_over_seconds: float = 0.0
    mirrored_after_switch: int = 0  # writes made up to the switch, mirrored right after it
    vectors_checked: int = 0  # sampled shadows compared with their original's re-encoding
    # finish variant: what ended the wait for the new encoding, the final index
    finish_started_by: str | None = None
    final_index: str | None = None
    not_built: list[str] = []


class OnlineProgress(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag=PROGRESS_FORMAT,
    tag_field="format",
):
    """The progress header of an online re-encoding run, beside its plan copy.

    Replaced atomically at every stage; checksummed (``checksum``), so an edited or
    damaged header is refused rather than trusted.
    """

    version: int = PROGRESS_VERSION
    index_name: str
    plan_hash: str
    shadow_index: str
    stage: Stage
    # the name moved to the shadow index (a rollback then rebuilds the source)
    switched: bool = False
    runs: int = 1  # apply runs of this migration (a resume adds one)
    counts: ShadowCounts = ShadowCounts()
    started_at: str
    updated_at: str
    switched_at: str | None = None
    # this run waits for the operator's `redismigrate cut-over` since then (None: not)
    awaiting_since: str | None = None
    # finish variant: the index on the original fields that takes the name last
    final_index: str | None = None
    # when the run saw the application write the new encoding (or was told to go on)
    new_encoding_seen_at: str | None = None
    final_switched_at: str | None = None
    # a rollback of the finish variant after the second switch: the shadow-reading index
    # it built again and moved the name to (a rerun of that rollback goes on from there)
    rollback_index: str | None = None

    def reached(self, stage: Stage) -> bool:
        return STAGES.index(self.stage) >= STAGES.index(stage)


def _checksum(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def write_progress(path: Path, progress: OnlineProgress) -> None:
    data: dict[str, Any] = msgspec.to_builtins(progress)
    data[PROGRESS_CHECKSUM] = _checksum(data)
    write_document(path, data)


def read_progress(path: Path) -> OnlineProgress | None:
    """The header in ``path`` (None when there is none); BadInputError when it cannot be
    trusted (not one, another version, edited since it was written)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadInputError(f"progress header {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT:
        raise BadInputError(f"{path} is not an online progress header")
    if data.get("version") != PROGRESS_VERSION:
        raise BadInputError(
            f"progress header {path} is version {data.get('version')!r}; this redismigrate "
            f"reads version {PROGRESS_VERSION}"
        )
    claimed = data.pop(PROGRESS_CHECKSUM, None)
    if claimed != _checksum(data):
        raise BadInputError(
            f"progress header {path} does not match its checksum: it was edited or damaged "
            "since redismigrate wrote it"
        )
    try:
        return msgspec.convert(data, OnlineProgress)
    except msgspec.ValidationError as exc:
        raise BadInputError(f"progress header {path} is not valid: {exc}") from None
