"""Schema patches: what a user wants changed, as data. Pure code.

The layout is the one users of RedisVL's migrator already write, so their files
load unchanged::

    version: 1
    changes:
      add_fields:    [{name, type, path, attrs}]
      remove_fields: [name, ...]
      update_fields: [{name, attrs}]          # only the attrs to change
      rename_fields: [{old_name, new_name}]
      index:         {name, prefix}
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from redismigrate.errors import SchemaError
from redismigrate.files import ReviewableFile
from redismigrate.schema import (
    FIELD_TYPES,
    Field,
    IndexSchema,
    Model,
    NumericField,
    TagField,
    TextField,
    field_to_dict,
    non_default_builtins,
    schema_from_dict,
    type_name,
)

PATCH_FORMAT_VERSION = 1


class FieldUpdate(Model, frozen=True, kw_only=True):
    """Change some attributes of one field (and, rarely, its type or path)."""

    name: str
    type: str | None = None
    path: str | None = None
    attrs: dict[str, Any] = {}
    # RedisVL accepts ``options`` as another name for attrs
    options: dict[str, Any] = {}

    @property
    def all_attrs(self) -> dict[str, Any]:
        return {**self.attrs, **self.options}


class FieldRename(Model, frozen=True, kw_only=True):
    old_name: str
    new_name: str


class IndexChange(Model, frozen=True, kw_only=True):
    name: str | None = None
    prefix: str | list[str] | None = None
    key_separator: str | None = None
    storage_type: str | None = None
    # index-wide options to change (see schema.IndexOptions)
    options: dict[str, Any] = {}

    @property
    def is_empty(self) -> bool:
        return (
            self.name is None
            and self.prefix is None
            and self.key_separator is None
            and self.storage_type is None
            and not self.options
        )


class SchemaChanges(Model, frozen=True, kw_only=True):
    add_fields: list[dict[str, Any]] = []
    remove_fields: list[str] = []
    update_fields: list[FieldUpdate] = []
    rename_fields: list[FieldRename] = []
    index: IndexChange = IndexChange()

    @property
    def is_empty(self) -> bool:
        return not (
            self.add_fields
            or self.remove_fields
            or self.update_fields
            or self.rename_fields
            or not self.index.is_empty
        )


class SchemaPatch(Model, ReviewableFile, frozen=True, kw_only=True):
    """A patch: every section optional. ``source_index`` (ours) pins it to one index."""

    file_kind: ClassVar[str] = "schema patch"

    version: int = PATCH_FORMAT_VERSION
    source_index: str | None = None
    changes: SchemaChanges = SchemaChanges()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.source_index is not None:
            out["source_index"] = self.source_index
        out["changes"] = non_default_builtins(self.changes)
        if "index" in out["changes"]:
            out["changes"]["index"] = non_default_builtins(self.changes.index)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "patch") -> SchemaPatch:
        return patch_from_dict(data, source=source)


def patch_from_dict(data: Any, *, source: str = "patch") -> SchemaPatch:
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: a schema patch must be a mapping with 'changes'")
    if "index" in data and "fields" in data and "changes" not in data:
        raise SchemaError(
            f"{source}: this is a full schema, not a patch; pass it with --target-schema"
        )
    try:
        patch = msgspec.convert(data, SchemaPatch)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {exc}") from None
    if patch.version != PATCH_FORMAT_VERSION:
        raise SchemaError(
            f"{source}: patch version {patch.version} is not supported "
            f"(supported: {PATCH_FORMAT_VERSION})"
        )
    for position, raw in enumerate(patch.changes.add_fields):
        parse_field(raw, source=f"{source}: changes.add_fields[{position}]")
    for update in patch.changes.update_fields:
        if update.type is not None and update.type.lower() not in FIELD_TYPES:
            raise SchemaError(
                f"{source}: update of field {update.name!r} has type {update.type!r}; "
                "expected one of " + ", ".join(FIELD_TYPES)
            )
    return patch


def parse_field(raw: Any, *, source: str, storage_type: str = "hash") -> Field:
    """One field definition checked through the schema model."""
    schema = schema_from_dict(
        {"index": {"name": "_", "storage_type": storage_type}, "fields": [raw]}, source=source
    )
    return schema.fields[0]


def diff_schemas(source: IndexSchema, target: IndexSchema) -> SchemaPatch:
    """The patch that turns ``source`` into ``target`` (both compared in canonical form).

    Fields present in both with another type become remove + add of the same name.
    """
    src, tgt = source.canonical(), target.canonical()
    src_fields = {f.name: f for f in src.fields}
    tgt_fields = {f.name: f for f in tgt.fields}
    add: list[dict[str, Any]] = []
    remove: list[str] = []
    update: list[FieldUpdate] = []
    for name, field in src_fields.items():
        wanted = tgt_fields.get(name)
        if wanted is None:
            remove.append(name)
        elif type(wanted) is not type(field):
            remove.append(name)
            add.append(field_to_dict(target_field(target, name)))
        elif wanted != field:
            old_attrs = msgspec.structs.asdict(field.attrs)
            new_attrs = msgspec.structs.asdict(wanted.attrs)
            changed = {k: v for k, v in new_attrs.items() if old_attrs.get(k) != v}
            update.append(
                FieldUpdate(
                    name=name,
                    path=wanted.path if wanted.path != field.path else None,
                    attrs=changed,
                )
            )
    for name in tgt_fields:
        if name not in src_fields:
            add.append(field_to_dict(target_field(target, name)))
    index = IndexChange(
        name=tgt.index.name if tgt.index.name != src.index.name else None,
        prefix=tgt.index.prefix if tgt.prefixes != src.prefixes else None,
        key_separator=(
            tgt.index.key_separator if tgt.index.key_separator != src.index.key_separator else None
        ),
        storage_type=tgt.storage_type if tgt.storage_type != src.storage_type else None,
        options={
            k: v
            for k, v in msgspec.structs.asdict(tgt.index.options).items()
            if getattr(src.index.options, k) != v
        },
    )
    return SchemaPatch(
        changes=SchemaChanges(
            add_fields=add, remove_fields=remove, update_fields=update, index=index
        )
    )


def target_schema_notes(target: IndexSchema) -> list[str]:
    """What a target schema says that the index will not keep as written (the server keeps
    the same meaning in another form): one line each, for the plan's warnings."""
    notes: list[str] = []
    for field in target.fields:
        if isinstance(field, TextField) and field.attrs.phonetic_matcher not in (None, "dm:en"):
            notes.append(
                f"Field {field.name!r}: phonetic_matcher {field.attrs.phonetic_matcher} is kept as "
                "dm:en: the server records only that a field is phonetic (every matcher is "
                "the same double metaphone), so FT.INFO cannot tell them apart"
            )
        if (
            isinstance(field, TextField | TagField | NumericField)
            and field.attrs.unf
            and not field.attrs.sortable
        ):
            notes.append(
                f"Field {field.name!r}: unf is left out: it applies only to a sortable field"
            )
    return notes


def target_field(schema: IndexSchema, name: str) -> Field:
    found = schema.field(name)
    if found is None:
        raise KeyError(name)
    return found


def describe_field(field: Field) -> str:
    return f"{field.name} ({type_name(field)})"
