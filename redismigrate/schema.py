"""The index schema model: what a Redis Search index is, as data.

Pure code, no I/O. The file layout is the one users of Redis vector tools
already write::

    version: 0.1.0
    index: {name, prefix, key_separator, storage_type, options}
    fields:
      - {name, type, path, attrs}

``canonical()`` gives the form the server keeps for a schema (defaults filled in,
implied flags set); two schemas describe the same index exactly when their
canonical forms are equal. Every vector field is written in full (algorithm,
datatype, distance metric and each parameter of its algorithm), the layout
RedisVL's ``IndexSchema.from_dict`` reads; index-level ``stopwords`` sit beside
the name, as there, and the other index options under ``options``.

Some vector parameters are not reported back by every server (FT.INFO leaves
out HNSW EF_RUNTIME and EPSILON, FLAT BLOCK_SIZE, SVS-VAMANA SEARCH_WINDOW_SIZE
and EPSILON; INITIAL_CAP is reported nowhere): see ``MAYBE_UNREPORTED`` and
``UnreportedAttribute``. Comparisons with a live index use only what it reports
(``with_unreported_from``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeAlias

import msgspec

from redismigrate.errors import SchemaError
from redismigrate.files import ReviewableFile

SCHEMA_FORMAT_VERSION = "0.1.0"
SUPPORTED_SCHEMA_VERSIONS = ("0.1.0",)

StorageType: TypeAlias = Literal["hash", "json"]
VECTOR_ALGORITHMS = ("flat", "hnsw", "svs-vamana")
VECTOR_DATATYPES = ("float32", "float64", "float16", "bfloat16", "int8", "uint8")
DISTANCE_METRICS = ("cosine", "l2", "ip")
DATATYPE_BYTES = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "uint8": 1,
}
HNSW_DEFAULTS = {"m": 16, "ef_construction": 200, "ef_runtime": 10, "epsilon": 0.01}
FLAT_DEFAULT_BLOCK_SIZE = 1024
# VectorSimilarity src/VecSim/vec_sim_common.h: SVS_VAMANA_DEFAULT_GRAPH_MAX_DEGREE,
# _CONSTRUCTION_WINDOW_SIZE, _SEARCH_WINDOW_SIZE, _EPSILON; _TRAINING_THRESHOLD is
# 10 * DEFAULT_BLOCK_SIZE, set by RediSearch src/spec.c only when the field is compressed,
# which also sets REDUCE to dims / 2 for LeanVec compressions when none is given.
SVS_DEFAULTS = {
    "graph_max_degree": 32,
    "construction_window_size": 200,
    "search_window_size": 10,
    "epsilon": 0.01,
}
SVS_DEFAULT_TRAINING_THRESHOLD = 10 * 1024
# SVS-VAMANA COMPRESSION as the server spells it (RediSearch src/vector_index.h, the
# VECSIM_LVQ_* and VECSIM_LEANVEC_* names; FT.CREATE takes any case): the canonical
# spelling, which RedisVL's schema also needs (it writes them lower-case, reads only these)
SVS_COMPRESSION_NAMES = ("LVQ8", "LVQ4", "LVQ4x4", "LVQ4x8", "LeanVec4x8", "LeanVec8x8")
# The parameters each algorithm takes, in the order they are written.
VECTOR_PARAMS: dict[str, tuple[str, ...]] = {
    "flat": ("block_size", "initial_cap"),
    "hnsw": ("m", "ef_construction", "ef_runtime", "epsilon", "initial_cap"),
    "svs-vamana": (
        "graph_max_degree",
        "construction_window_size",
        "search_window_size",
        "epsilon",
        "compression",
        "reduce",
        "training_threshold",
    ),
}
# Parameters FT.INFO leaves out (RediSearch src/info/info_command.c, the vector branch of
# the attributes loop: FLAT reports type, dim and metric; HNSW adds M and EF_CONSTRUCTION;
# SVS-VAMANA adds GRAPH_MAX_DEGREE, CONSTRUCTION_WINDOW_SIZE, COMPRESSION and, when
# compressed, TRAINING_THRESHOLD and the LeanVec REDUCE). FT.DEBUG VECSIM_INFO reports all
# but INITIAL_CAP where the server lets it run (search 2.x; search 8 refuses ``_FT.DEBUG``
# unless enable-debug-command is on).
MAYBE_UNREPORTED: dict[str, tuple[str, ...]] = {
    "flat": ("block_size", "initial_cap"),
    "hnsw": ("ef_runtime", "epsilon", "initial_cap"),
    "svs-vamana": ("search_window_size", "epsilon"),
}
DEFAULT_TAG_SEPARATOR = ","
DEFAULT_LANGUAGE = "english"
PHONETIC_MATCHERS = ("dm:en", "dm:fr", "dm:pt", "dm:es")


class Model(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Base of every file-format struct: frozen, strict about unknown keys, keywords only."""


class TextAttrs(Model, frozen=True, kw_only=True):
    weight: float = 1.0
    no_stem: bool = False
    phonetic_matcher: str | None = None
    withsuffixtrie: bool = False
    sortable: bool = False
    unf: bool = False
    no_index: bool = False
    index_missing: bool = False
    index_empty: bool = False


class TagAttrs(Model, frozen=True, kw_only=True):
    separator: str | None = None
    case_sensitive: bool = False
    withsuffixtrie: bool = False
    sortable: bool = False
    unf: bool = False
    no_index: bool = False
    index_missing: bool = False
    index_empty: bool = False


class NumericAttrs(Model, frozen=True, kw_only=True):
    sortable: bool = False
    unf: bool = False
    no_index: bool = False
    index_missing: bool = False


class GeoAttrs(Model, frozen=True, kw_only=True):
    sortable: bool = False
    no_index: bool = False
    index_missing: bool = False


class GeoShapeAttrs(Model, frozen=True, kw_only=True):
    coord_system: Literal["spherical", "flat"] = "spherical"
    no_index: bool = False
    index_missing: bool = False


class VectorAttrs(Model, frozen=True, kw_only=True):
    dims: int
    algorithm: str = "flat"
    datatype: str = "float32"
    distance_metric: str = "cosine"
    index_missing: bool = False
    # FLAT
    block_size: int | None = None
    initial_cap: int | None = None
    # HNSW (epsilon also SVS-VAMANA)
    m: int | None = None
    ef_construction: int | None = None
    ef_runtime: int | None = None
    epsilon: float | None = None
    # SVS-VAMANA
    graph_max_degree: int | None = None
    construction_window_size: int | None = None
    search_window_size: int | None = None
    compression: str | None = None
    reduce: int | None = None
    training_threshold: int | None = None

    @property
    def bytes_per_vector(self) -> int:
        return self.dims * DATATYPE_BYTES[self.datatype]


class _FieldBase(Model, tag_field="type", frozen=True, kw_only=True):
    name: str
    # JSON: the JSONPath indexed. Hash: the hash field when it differs from ``name``
    # (FT.CREATE ... field AS name).
    path: str | None = None


class TextField(_FieldBase, tag="text", frozen=True, kw_only=True):
    attrs: TextAttrs = TextAttrs()


class TagField(_FieldBase, tag="tag", frozen=True, kw_only=True):
    attrs: TagAttrs = TagAttrs()


class NumericField(_FieldBase, tag="numeric", frozen=True, kw_only=True):
    attrs: NumericAttrs = NumericAttrs()


class GeoField(_FieldBase, tag="geo", frozen=True, kw_only=True):
    attrs: GeoAttrs = GeoAttrs()


class GeoShapeField(_FieldBase, tag="geoshape", frozen=True, kw_only=True):
    attrs: GeoShapeAttrs = GeoShapeAttrs()


class VectorField(_FieldBase, tag="vector", frozen=True, kw_only=True):
    attrs: VectorAttrs


Field: TypeAlias = TextField | TagField | NumericField | GeoField | GeoShapeField | VectorField
FIELD_TYPES: dict[str, type[Field]] = {
    "text": TextField,
    "tag": TagField,
    "numeric": NumericField,
    "geo": GeoField,
    "geoshape": GeoShapeField,
    "vector": VectorField,
}


class IndexOptions(Model, frozen=True, kw_only=True):
    """Index-wide FT.CREATE options that FT.INFO reports back."""

    filter: str | None = None
    language: str | None = None
    language_field: str | None = None
    score: float | None = None
    score_field: str | None = None
    payload_field: str | None = None
    max_text_fields: bool = False
    no_offsets: bool = False
    no_highlight: bool = False
    no_fields: bool = False
    no_freqs: bool = False
    # INDEXALL ENABLE (search 8.0+): index every key under the prefixes, also those a
    # field's value cannot be read from; FT.INFO reports it as ``indexes_all``
    indexes_all: bool = False
    # None: the server's default list; []: no stopwords at all. Written as the index's
    # ``stopwords`` (where RedisVL keeps them); read from there or from ``options``.
    stopwords: list[str] | None = None


class IndexInfo(Model, frozen=True, kw_only=True):
    name: str
    prefix: str | list[str] = ""
    key_separator: str = ":"
    storage_type: StorageType = "hash"
    options: IndexOptions = IndexOptions()

    @property
    def prefixes(self) -> list[str]:
        return [self.prefix] if isinstance(self.prefix, str) else list(self.prefix)


class IndexSchema(Model, ReviewableFile, frozen=True, kw_only=True):
    """A Redis Search index definition: index-level settings and fields."""

    file_kind: ClassVar[str] = "schema file"

    index: IndexInfo
    fields: list[Field] = []
    version: str = SCHEMA_FORMAT_VERSION

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def storage_type(self) -> StorageType:
        return self.index.storage_type

    @property
    def prefixes(self) -> list[str]:
        return self.index.prefixes

    def field(self, name: str) -> Field | None:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        return None

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def vector_fields(self) -> list[VectorField]:
        return [f for f in self.fields if isinstance(f, VectorField)]

    def canonical(self) -> IndexSchema:
        """The form the server reports for this schema (see module docstring)."""
        return canonicalize(self)

    def same_index_as(self, other: IndexSchema) -> bool:
        return self.canonical() == other.canonical()

    # file formats -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file layout: keys in the order people write them."""
        index: dict[str, Any] = {
            "name": self.index.name,
            "prefix": self.index.prefix,
            "key_separator": self.index.key_separator,
            "storage_type": self.index.storage_type,
        }
        if self.index.options.stopwords is not None:
            index["stopwords"] = list(self.index.options.stopwords)
        options = non_default_builtins(self.index.options)
        options.pop("stopwords", None)
        if options:
            index["options"] = options
        return {
            "version": self.version,
            "index": index,
            "fields": [field_to_dict(f) for f in self.fields],
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "schema") -> IndexSchema:
        return schema_from_dict(data, source=source)


class UnreportedAttribute(Model, frozen=True, kw_only=True):
    """A vector parameter the live server did not report (see ``MAYBE_UNREPORTED``).

    ``recorded`` is the value an earlier redismigrate run created the index with, found
    in the migration ledger or the plan kept in that run's backup directory, and
    ``recorded_by`` says which run; both None when no run recorded it (then the server's
    default is assumed, and the index may in fact have been made with another value).
    """

    field: str
    attribute: str
    recorded: int | float | str | None = None
    recorded_by: str | None = None


def unreported_map(items: list[UnreportedAttribute]) -> dict[str, list[str]]:
    """``{field: [attribute, ...]}`` of ``items``."""
    out: dict[str, list[str]] = {}
    for item in items:
        out.setdefault(item.field, []).append(item.attribute)
    return out


def with_unreported_from(
    live: IndexSchema, unreported: dict[str, list[str]], reference: IndexSchema
) -> IndexSchema:
    """``live`` with the attributes its server did not report taken from ``reference``
    (same field name, same algorithm): so a comparison with ``reference`` looks only at
    what the server reports."""
    fields: list[Field] = []
    for field in live.fields:
        wanted = reference.field(field.name)
        names = unreported.get(field.name, [])
        if (
            names
            and isinstance(field, VectorField)
            and isinstance(wanted, VectorField)
            and wanted.attrs.algorithm == field.attrs.algorithm
        ):
            values = {n: getattr(wanted.attrs, n) for n in names}
            field = msgspec.structs.replace(
                field, attrs=msgspec.structs.replace(field.attrs, **values)
            )
        fields.append(field)
    return msgspec.structs.replace(live, fields=fields)


def with_recorded(schema: IndexSchema, items: list[UnreportedAttribute]) -> IndexSchema:
    """``schema`` with every recorded value of ``items`` set."""
    values: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.recorded is not None:
            values.setdefault(item.field, {})[item.attribute] = item.recorded
    fields: list[Field] = []
    for field in schema.fields:
        if isinstance(field, VectorField) and field.name in values:
            attrs = msgspec.structs.replace(field.attrs, **values[field.name])
            field = msgspec.structs.replace(field, attrs=attrs)
        fields.append(field)
    return msgspec.structs.replace(schema, fields=fields)


# --------------------------------------------------------------------------- loading


_LOWERCASE_VECTOR_ATTRS = ("algorithm", "datatype", "distance_metric")
_LOWERCASE_FIELD_KEYS = ("type",)


def _normalize_field_dict(raw: Any, source: str, position: int) -> Any:
    if not isinstance(raw, dict):
        raise SchemaError(
            f"{source}: fields[{position}] must be a mapping, got {type(raw).__name__}"
        )
    field = dict(raw)
    for key in _LOWERCASE_FIELD_KEYS:
        if isinstance(field.get(key), str):
            field[key] = field[key].strip().lower()
    if field.get("type") not in FIELD_TYPES:
        name = field.get("name", f"#{position}")
        raise SchemaError(
            f"{source}: field {name!r} has type {field.get('type')!r}; expected one of "
            + ", ".join(FIELD_TYPES)
        )
    attrs = field.get("attrs")
    if isinstance(attrs, dict):
        attrs = dict(attrs)
        if field["type"] == "vector":
            for key in _LOWERCASE_VECTOR_ATTRS:
                if isinstance(attrs.get(key), str):
                    attrs[key] = attrs[key].strip().lower()
            if attrs.get("algorithm") == "svs_vamana":
                attrs["algorithm"] = "svs-vamana"
        if field["type"] == "geoshape" and isinstance(attrs.get("coord_system"), str):
            attrs["coord_system"] = attrs["coord_system"].lower()
        field["attrs"] = attrs
    elif attrs is None:
        field.pop("attrs", None)
    return field


def _stopwords_into_options(index: dict[str, Any], source: str) -> dict[str, Any]:
    """RedisVL keeps ``stopwords`` beside the index name; ours is ``options.stopwords``."""
    index = dict(index)
    stopwords = index.pop("stopwords")
    options = index.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return {**index, "stopwords": stopwords}  # left for the type check to name
    if "stopwords" in options and options["stopwords"] != stopwords:
        raise SchemaError(
            f"{source}: index.stopwords and index.options.stopwords differ; give one of them"
        )
    return {**index, "options": {**options, "stopwords": stopwords}}


def schema_layout(data: Any, *, source: str = "schema") -> Any:
    """A schema's plain data as the model holds it (index ``stopwords`` moved into its
    options), for documents that embed a schema (plans, reports) and are read whole."""
    if (
        isinstance(data, dict)
        and isinstance(data.get("index"), dict)
        and "stopwords" in data["index"]
    ):
        return {**data, "index": _stopwords_into_options(data["index"], source)}
    return data


def schema_from_dict(data: Any, *, source: str = "schema") -> IndexSchema:
    """Build and check an IndexSchema from plain data; SchemaError names the problem."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: expected a mapping with 'index' and 'fields'")
    data = dict(data)
    if "version" in data:
        data["version"] = str(data["version"])
        if data["version"] not in SUPPORTED_SCHEMA_VERSIONS:
            raise SchemaError(
                f"{source}: schema version {data['version']!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_SCHEMA_VERSIONS)})"
            )
    if "index" not in data:
        raise SchemaError(f"{source}: missing the 'index' section")
    index = data["index"]
    if isinstance(index, dict) and isinstance(index.get("storage_type"), str):
        index = data["index"] = {**index, "storage_type": index["storage_type"].lower()}
    if isinstance(index, dict) and "stopwords" in index:
        data["index"] = _stopwords_into_options(index, source)
    fields = data.get("fields")
    if fields is None:
        data["fields"] = []
    elif not isinstance(fields, list):
        raise SchemaError(f"{source}: 'fields' must be a list")
    else:
        data["fields"] = [_normalize_field_dict(f, source, i) for i, f in enumerate(fields)]
    try:
        schema = msgspec.convert(data, IndexSchema)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {exc}") from None
    validate_schema(schema, source=source)
    return schema


def validate_schema(schema: IndexSchema, *, source: str = "schema") -> None:
    """Check what the types alone cannot; raise SchemaError with the first problem."""
    if not schema.index.name:
        raise SchemaError(f"{source}: the index name is empty")
    if not schema.prefixes:
        raise SchemaError(f"{source}: the index has an empty prefix list")
    seen: set[str] = set()
    for field in schema.fields:
        if not field.name:
            raise SchemaError(f"{source}: a field has an empty name")
        if field.name in seen:
            raise SchemaError(f"{source}: field {field.name!r} is defined twice")
        seen.add(field.name)
        if isinstance(field, VectorField):
            _validate_vector(field, source)
        if (
            isinstance(field, TagField)
            and field.attrs.separator is not None
            and (len(field.attrs.separator) != 1)
        ):
            raise SchemaError(
                f"{source}: field {field.name!r}: separator must be one character, "
                f"got {field.attrs.separator!r}"
            )
        if (
            isinstance(field, TextField)
            and field.attrs.phonetic_matcher is not None
            and (field.attrs.phonetic_matcher not in PHONETIC_MATCHERS)
        ):
            raise SchemaError(
                f"{source}: field {field.name!r}: phonetic_matcher must be one of "
                + ", ".join(PHONETIC_MATCHERS)
            )
        attrs = field.attrs
        if getattr(attrs, "no_index", False) and getattr(attrs, "index_missing", False):
            raise SchemaError(
                f"{source}: field {field.name!r} cannot be both no_index and index_missing"
            )
    # the ranges the server takes (limits.py imports this module, hence the late import)
    from redismigrate.limits import range_problems

    problems = range_problems(schema)
    if problems:
        raise SchemaError(f"{source}: " + "; ".join(problems))


def _validate_vector(field: VectorField, source: str) -> None:
    a = field.attrs
    where = f"{source}: vector field {field.name!r}"
    if a.dims <= 0:
        raise SchemaError(f"{where}: dims must be a positive number")
    if a.algorithm not in VECTOR_ALGORITHMS:
        raise SchemaError(
            f"{where}: algorithm {a.algorithm!r} is not one of " + ", ".join(VECTOR_ALGORITHMS)
        )
    if a.datatype not in VECTOR_DATATYPES:
        raise SchemaError(
            f"{where}: datatype {a.datatype!r} is not one of " + ", ".join(VECTOR_DATATYPES)
        )
    if a.distance_metric not in DISTANCE_METRICS:
        raise SchemaError(
            f"{where}: distance_metric {a.distance_metric!r} is not one of "
            + ", ".join(DISTANCE_METRICS)
        )
    hnsw_only = ("m", "ef_construction", "ef_runtime")
    svs_only = (
        "graph_max_degree",
        "construction_window_size",
        "search_window_size",
        "compression",
        "reduce",
        "training_threshold",
    )
    allowed: dict[str, tuple[str, ...]] = {
        "flat": ("block_size", "initial_cap"),
        "hnsw": (*hnsw_only, "epsilon", "initial_cap"),
        "svs-vamana": (*svs_only, "epsilon"),
    }
    for name in ("block_size", "initial_cap", *hnsw_only, "epsilon", *svs_only):
        if getattr(a, name) is not None and name not in allowed[a.algorithm]:
            raise SchemaError(f"{where}: {name} does not apply to algorithm {a.algorithm}")


# --------------------------------------------------------------------------- canonical form


def default_json_path(name: str) -> str:
    return name if name.startswith("$") else f"$.{name}"


def canonicalize(schema: IndexSchema) -> IndexSchema:
    """Fill defaults and implied flags so equal indexes compare equal."""
    storage = schema.index.storage_type
    options = schema.index.options
    if options.language == DEFAULT_LANGUAGE:
        options = msgspec.structs.replace(options, language=None)
    if options.score == 1.0:
        options = msgspec.structs.replace(options, score=None)
    if options.no_offsets and not options.no_highlight:
        options = msgspec.structs.replace(options, no_highlight=True)
    if options.stopwords is not None:
        options = msgspec.structs.replace(options, stopwords=sorted(options.stopwords))
    prefixes = schema.index.prefixes
    index = msgspec.structs.replace(
        schema.index,
        prefix=prefixes[0] if len(prefixes) == 1 else list(prefixes),
        options=options,
    )
    fields = [_canonical_field(f, storage) for f in schema.fields]
    return IndexSchema(index=index, fields=fields, version=SCHEMA_FORMAT_VERSION)


def _canonical_field(field: Field, storage: StorageType) -> Field:
    path = field.path
    if storage == "json":
        path = path or default_json_path(field.name)
    elif path == field.name:
        path = None
    replace = msgspec.structs.replace
    if isinstance(field, TextField):
        a = field.attrs
        # the server keeps only the flag, not the matcher's language
        matcher = "dm:en" if a.phonetic_matcher else None
        unf = a.unf and a.sortable
        if storage == "json" and a.sortable:
            unf = True
        return replace(field, path=path, attrs=replace(a, phonetic_matcher=matcher, unf=unf))
    if isinstance(field, TagField):
        tag = field.attrs
        separator = tag.separator
        if separator == DEFAULT_TAG_SEPARATOR and storage == "hash":
            separator = None
        tag_unf = tag.sortable and (tag.unf or tag.case_sensitive or storage == "json")
        return replace(field, path=path, attrs=replace(tag, separator=separator, unf=tag_unf))
    if isinstance(field, NumericField):
        return replace(field, path=path, attrs=replace(field.attrs, unf=field.attrs.sortable))
    if isinstance(field, VectorField):
        return replace(field, path=path, attrs=_canonical_vector(field.attrs))
    return replace(field, path=path)


def _canonical_vector(a: VectorAttrs) -> VectorAttrs:
    replace = msgspec.structs.replace
    if a.algorithm == "flat":
        return replace(a, block_size=a.block_size or FLAT_DEFAULT_BLOCK_SIZE)
    if a.algorithm == "hnsw":
        return replace(
            a,
            m=a.m if a.m is not None else HNSW_DEFAULTS["m"],
            ef_construction=(
                a.ef_construction
                if a.ef_construction is not None
                else HNSW_DEFAULTS["ef_construction"]
            ),
            ef_runtime=a.ef_runtime if a.ef_runtime is not None else HNSW_DEFAULTS["ef_runtime"],
            epsilon=a.epsilon if a.epsilon is not None else HNSW_DEFAULTS["epsilon"],
        )
    if a.algorithm == "svs-vamana":
        filled: dict[str, Any] = {
            name: getattr(a, name) if getattr(a, name) is not None else default
            for name, default in SVS_DEFAULTS.items()
        }
        compression = a.compression
        if compression is not None and compression.upper() in ("NO_COMPRESSION", "NONE"):
            compression = None
        spelled = {name.upper(): name for name in SVS_COMPRESSION_NAMES}
        if compression is not None:
            compression = spelled.get(compression.upper(), compression)
        filled["compression"] = compression
        if compression is not None and a.training_threshold is None:
            filled["training_threshold"] = SVS_DEFAULT_TRAINING_THRESHOLD
        leanvec = compression is not None and compression.lower().startswith("leanvec")
        if leanvec and a.reduce is None:
            filled["reduce"] = a.dims // 2
        return replace(a, **filled)
    return a


def non_default_builtins(struct: msgspec.Struct) -> dict[str, Any]:
    """A struct's fields as plain data, leaving out those equal to their defaults."""
    out: dict[str, Any] = {}
    for info in msgspec.structs.fields(struct):
        value = getattr(struct, info.name)
        default = info.default if info.default is not msgspec.NODEFAULT else msgspec.NODEFAULT
        if info.default_factory is not msgspec.NODEFAULT:
            default = info.default_factory()
        if default is not msgspec.NODEFAULT and value == default:
            continue
        out[info.name] = msgspec.to_builtins(value)
    return out


def field_to_dict(field: Field) -> dict[str, Any]:
    """One field as plain data: ``{name, type, path, attrs}``, empty parts left out; a
    vector field's attributes in full (``vector_attrs_dict``)."""
    data: dict[str, Any] = {"name": field.name, "type": type_name(field)}
    if field.path is not None:
        data["path"] = field.path
    if isinstance(field, VectorField):
        data["attrs"] = vector_attrs_dict(field.attrs)
        return data
    attrs = non_default_builtins(field.attrs)
    if attrs:
        data["attrs"] = attrs
    return data


def vector_attrs_dict(attrs: VectorAttrs) -> dict[str, Any]:
    """A vector field's attributes as written: dims, algorithm, datatype, distance metric
    and every parameter of its algorithm, defaults filled in (RedisVL needs the algorithm
    and reads the rest); ``initial_cap``, SVS compression settings and ``index_missing``
    only when set."""
    a = _canonical_vector(attrs)
    out: dict[str, Any] = {
        "dims": a.dims,
        "algorithm": a.algorithm,
        "datatype": a.datatype,
        "distance_metric": a.distance_metric,
    }
    for name in VECTOR_PARAMS.get(a.algorithm, ()):
        value = getattr(a, name)
        if value is not None:
            out[name] = value
    if a.index_missing:
        out["index_missing"] = True
    return out


def type_name(field: Field) -> str:
    """The ``type`` tag of a field: text, tag, numeric, geo, geoshape or vector."""
    for name, cls in FIELD_TYPES.items():
        if isinstance(field, cls):
            return name
    raise AssertionError(field)


def field_summary(field: Field) -> str:
    """A short human description, e.g. ``vector hnsw float32 768d cosine``."""
    if isinstance(field, VectorField):
        a = field.attrs
        return f"vector {a.algorithm} {a.datatype} {a.dims}d {a.distance_metric}"
    flags = [k for k, v in msgspec.structs.asdict(field.attrs).items() if v is True]
    return " ".join([type_name(field), *flags])
