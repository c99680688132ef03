"""Read FT.INFO replies (RESP2 lists or RESP3 maps) into the schema model.

Pure code, no I/O: the async layer fetches the replies and hands them here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from redismigrate.errors import ServerReplyError
from redismigrate.schema import (
    MAYBE_UNREPORTED,
    Field,
    GeoAttrs,
    GeoField,
    GeoShapeAttrs,
    GeoShapeField,
    IndexInfo,
    IndexOptions,
    IndexSchema,
    NumericAttrs,
    NumericField,
    StorageType,
    TagAttrs,
    TagField,
    TextAttrs,
    TextField,
    UnreportedAttribute,
    VectorAttrs,
    VectorField,
)

# Attribute words FT.INFO prints on their own; every other word is followed by its value.
_FLAG_WORDS = frozenset(
    {
        "SORTABLE",
        "UNF",
        "NOSTEM",
        "NOINDEX",
        "CASESENSITIVE",
        "WITHSUFFIXTRIE",
        "INDEXEMPTY",
        "INDEXMISSING",
        "PHONETIC",
    }
)
_OPTION_FLAGS = {
    "MAXTEXTFIELDS": "max_text_fields",
    "NOOFFSETS": "no_offsets",
    "NOHL": "no_highlight",
    "NOFIELDS": "no_fields",
    "NOFREQS": "no_freqs",
}
_VECTOR_INT_KEYS = {
    "M": "m",
    "EF_CONSTRUCTION": "ef_construction",
    "EF_RUNTIME": "ef_runtime",
    "BLOCK_SIZE": "block_size",
    "GRAPH_MAX_DEGREE": "graph_max_degree",
    "CONSTRUCTION_WINDOW_SIZE": "construction_window_size",
    "SEARCH_WINDOW_SIZE": "search_window_size",
    "REDUCE": "reduce",
    # what FT.INFO calls REDUCE (RediSearch src/info/info_command.c)
    "REDUCED_DIM": "reduce",
    "TRAINING_THRESHOLD": "training_threshold",
}
# The words a server reports each parameter under (FT.INFO or FT.DEBUG VECSIM_INFO).
_PARAM_WORDS = {
    "block_size": ("BLOCK_SIZE",),
    "initial_cap": ("INITIAL_CAP",),
    "ef_runtime": ("EF_RUNTIME",),
    "epsilon": ("EPSILON",),
    "search_window_size": ("SEARCH_WINDOW_SIZE",),
}


class IndexStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Counters and sizes FT.INFO reports for an index."""

    num_docs: int = 0
    max_doc_id: int = 0
    num_terms: int = 0
    num_records: int = 0
    hash_indexing_failures: int = 0
    indexing: bool = False
    percent_indexed: float = 1.0
    sizes_mb: dict[str, float] = {}

    @property
    def vector_index_mb(self) -> float:
        return self.sizes_mb.get("vector_index_sz_mb", 0.0)

    @property
    def total_mb(self) -> float:
        """Everything the index itself holds in memory (inverted, vector, tables)."""
        return sum(v for k, v in self.sizes_mb.items() if k != "total_index_memory_sz_mb")


def text(value: Any) -> str:
    """A reply item as ``str`` (bytes decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _number(value: Any) -> float:
    try:
        return float(text(value)) if isinstance(value, (bytes, str)) else float(value)
    except (TypeError, ValueError):
        return math.nan


def pairs_to_dict(value: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat key/value list as a dict with ``str`` keys."""
    if isinstance(value, Mapping):
        return {text(k): v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) % 2:
            raise ServerReplyError("FT.INFO reply has an odd-length key/value list")
        return {text(value[i]): value[i + 1] for i in range(0, len(value), 2)}
    raise ServerReplyError(f"FT.INFO reply has an unexpected {type(value).__name__} here")


def _attribute_to_dict(raw: Any) -> tuple[dict[str, Any], set[str]]:
    """One entry of ``attributes``: (key/value settings with upper-case keys, flags)."""
    values: dict[str, Any] = {}
    flags: set[str] = set()
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if text(key).lower() == "flags":
                flags = {text(f).upper() for f in value or []}
            else:
                values[text(key).upper()] = value
        return values, flags
    if not isinstance(raw, (list, tuple)):
        raise ServerReplyError("FT.INFO attribute entry is neither a list nor a map")
    i = 0
    while i < len(raw):
        word = text(raw[i])
        if word.upper() in _FLAG_WORDS:
            flags.add(word.upper())
            i += 1
        else:
            if i + 1 >= len(raw):
                raise ServerReplyError(f"FT.INFO attribute {word!r} has no value")
            values[word.upper()] = raw[i + 1]
            i += 2
    return values, flags


def schema_from_ft_info(
    reply: Any,
    *,
    vector_details: Mapping[str, Mapping[str, Any]] | None = None,
    phonetic_fields: Sequence[str] = (),
) -> IndexSchema:
    """Build the IndexSchema of an FT.INFO reply.

    ``vector_details`` maps a vector field name to its ``FT.DEBUG VECSIM_INFO`` reply
    (parameters FT.INFO leaves out on older servers: EF_RUNTIME, EPSILON, BLOCK_SIZE).
    ``phonetic_fields`` names the text fields found to be phonetic where FT.INFO does
    not say.
    """
    info = pairs_to_dict(reply)
    try:
        name = text(info["index_name"])
        definition = pairs_to_dict(info["index_definition"])
        attributes = info["attributes"]
    except KeyError as exc:
        raise ServerReplyError(f"FT.INFO reply lacks {exc.args[0]!r}") from None
    storage_type: StorageType = (
        "json" if text(definition.get("key_type", "HASH")).upper() == ("JSON") else "hash"
    )
    prefixes = [text(p) for p in definition.get("prefixes", [""]) or [""]]
    options = _options_from_info(info, definition)
    fields = [
        _field_from_attribute(raw, storage_type, vector_details or {}, frozenset(phonetic_fields))
        for raw in attributes
    ]
    index = IndexInfo(
        name=name,
        prefix=prefixes[0] if len(prefixes) == 1 else prefixes,
        key_separator=_guess_key_separator(prefixes),
        storage_type=storage_type,
        options=options,
    )
    return IndexSchema(index=index, fields=fields)


def _guess_key_separator(prefixes: list[str]) -> str:
    # The server does not store the separator; a shared trailing punctuation mark
    # on every prefix is the best evidence of the one in use.
    endings = {p[-1] for p in prefixes if p}
    if len(endings) == 1:
        (ending,) = endings
        if ending in ":_-./|#":
            return ending
    return ":"


def _options_from_info(info: dict[str, Any], definition: dict[str, Any]) -> IndexOptions:
    flags = {text(f).upper() for f in info.get("index_options", []) or []}
    kwargs: dict[str, Any] = {attr: word in flags for word, attr in _OPTION_FLAGS.items()}
    if "filter" in definition:
        kwargs["filter"] = text(definition["filter"])
    if "default_language" in definition:
        kwargs["language"] = text(definition["default_language"]).lower()
    if "language_field" in definition:
        kwargs["language_field"] = text(definition["language_field"])
    if "default_score" in definition:
        score = _number(definition["default_score"])
        kwargs["score"] = None if score == 1.0 else score
    if "score_field" in definition:
        kwargs["score_field"] = text(definition["score_field"])
    if "payload_field" in definition:
        kwargs["payload_field"] = text(definition["payload_field"])
    if "indexes_all" in definition:
        kwargs["indexes_all"] = text(definition["indexes_all"]).lower() == "true"
    if "stopwords_list" in info:
        kwargs["stopwords"] = sorted(text(w) for w in info["stopwords_list"] or [])
    return IndexOptions(**kwargs)


def _field_from_attribute(
    raw: Any,
    storage_type: StorageType,
    vector_details: Mapping[str, Mapping[str, Any]],
    phonetic_fields: frozenset[str],
) -> Field:
    values, flags = _attribute_to_dict(raw)
    identifier = text(values.get("IDENTIFIER", ""))
    name = text(values.get("ATTRIBUTE", identifier))
    kind = text(values.get("TYPE", "")).upper()
    path: str | None = identifier if (storage_type == "json" or identifier != name) else None
    common = {
        "no_index": "NOINDEX" in flags,
        "index_missing": "INDEXMISSING" in flags,
    }
    sortable = "SORTABLE" in flags
    if kind == "TEXT":
        phonetic = "PHONETIC" in flags or "PHONETIC" in values or name in phonetic_fields
        return TextField(
            name=name,
            path=path,
            attrs=TextAttrs(
                weight=_number(values.get("WEIGHT", 1.0)),
                no_stem="NOSTEM" in flags,
                phonetic_matcher="dm:en" if phonetic else None,
                withsuffixtrie="WITHSUFFIXTRIE" in flags,
                sortable=sortable,
                unf="UNF" in flags,
                index_empty="INDEXEMPTY" in flags,
                **common,
            ),
        )
    if kind == "TAG":
        separator = text(values.get("SEPARATOR", ","))
        if separator == "" or (separator == "," and storage_type == "hash"):
            separator_or_none: str | None = None
        else:
            separator_or_none = separator
        return TagField(
            name=name,
            path=path,
            attrs=TagAttrs(
                separator=separator_or_none,
                case_sensitive="CASESENSITIVE" in flags,
                withsuffixtrie="WITHSUFFIXTRIE" in flags,
                sortable=sortable,
                unf="UNF" in flags,
                index_empty="INDEXEMPTY" in flags,
                **common,
            ),
        )
    if kind == "NUMERIC":
        return NumericField(
            name=name,
            path=path,
            attrs=NumericAttrs(sortable=sortable, unf="UNF" in flags, **common),
        )
    if kind == "GEO":
        return GeoField(name=name, path=path, attrs=GeoAttrs(sortable=sortable, **common))
    if kind == "GEOSHAPE":
        coord = text(values.get("COORD_SYSTEM", "SPHERICAL")).lower()
        return GeoShapeField(
            name=name,
            path=path,
            attrs=GeoShapeAttrs(coord_system="flat" if coord == "flat" else "spherical", **common),
        )
    if kind == "VECTOR":
        return VectorField(
            name=name,
            path=path,
            attrs=_vector_attrs(values, vector_details.get(name), common["index_missing"]),
        )
    raise ServerReplyError(f"FT.INFO reports field {name!r} with unknown type {kind!r}")


def _vector_attrs(
    values: dict[str, Any], details: Mapping[str, Any] | None, index_missing: bool
) -> VectorAttrs:
    algorithm = text(values.get("ALGORITHM", "FLAT")).lower().replace("_", "-")
    kwargs: dict[str, Any] = {
        "dims": int(_number(values.get("DIM", 0))),
        "algorithm": algorithm,
        "datatype": text(values.get("DATA_TYPE", "FLOAT32")).lower(),
        "distance_metric": text(values.get("DISTANCE_METRIC", "COSINE")).lower(),
        "index_missing": index_missing,
    }
    merged = dict(values)
    if details:
        merged = {**_vecsim_params(details, algorithm), **merged}
    for key, attr in _VECTOR_INT_KEYS.items():
        if key in merged:
            kwargs[attr] = int(_number(merged[key]))
    if "EPSILON" in merged:
        kwargs["epsilon"] = _number(merged["EPSILON"])
    if "COMPRESSION" in merged:
        compression = text(merged["COMPRESSION"])
        if compression.upper() not in ("NO_COMPRESSION", "NONE", ""):
            kwargs["compression"] = compression
    if algorithm == "flat":
        for attr in ("m", "ef_construction", "ef_runtime", "epsilon"):
            kwargs.pop(attr, None)
    elif algorithm == "hnsw":
        kwargs.pop("block_size", None)
    else:
        for attr in ("m", "ef_construction", "ef_runtime", "block_size"):
            kwargs.pop(attr, None)
    return VectorAttrs(**kwargs)


def _vecsim_params(details: Mapping[str, Any], algorithm: str) -> dict[str, Any]:
    """Parameters out of an FT.DEBUG VECSIM_INFO reply (tiered indexes nest the real one)."""
    info = {k.upper(): v for k, v in pairs_to_dict(details).items()}
    if text(info.get("ALGORITHM", "")).upper() == "TIERED":
        backend = info.get("BACKEND_INDEX")
        if backend is not None:
            info = {k.upper(): v for k, v in pairs_to_dict(backend).items()}
    wanted = set(_VECTOR_INT_KEYS) | {"EPSILON", "COMPRESSION"}
    if algorithm == "flat":
        wanted = {"BLOCK_SIZE"}
    return {k: v for k, v in info.items() if k in wanted}


def unreported_in_ft_info(
    reply: Any, *, vector_details: Mapping[str, Mapping[str, Any]] | None = None
) -> list[UnreportedAttribute]:
    """The vector parameters neither FT.INFO nor the ``FT.DEBUG VECSIM_INFO`` replies in
    ``vector_details`` report (see ``schema.MAYBE_UNREPORTED``), field by field."""
    info = pairs_to_dict(reply)
    out: list[UnreportedAttribute] = []
    for raw in info.get("attributes", []) or []:
        values, _ = _attribute_to_dict(raw)
        if text(values.get("TYPE", "")).upper() != "VECTOR":
            continue
        name = text(values.get("ATTRIBUTE", values.get("IDENTIFIER", "")))
        algorithm = text(values.get("ALGORITHM", "FLAT")).lower().replace("_", "-")
        reported = set(values)
        details = (vector_details or {}).get(name)
        if details:
            reported |= set(_vecsim_params(details, algorithm))
        for param in MAYBE_UNREPORTED.get(algorithm, ()):
            if not any(word in reported for word in _PARAM_WORDS[param]):
                out.append(UnreportedAttribute(field=name, attribute=param))
    return out


def stats_from_ft_info(reply: Any) -> IndexStats:
    """The counters and sizes of an FT.INFO reply."""
    info = pairs_to_dict(reply)
    sizes = {}
    for key, value in info.items():
        if key.endswith("_mb"):
            number = _number(value)
            sizes[key] = 0.0 if math.isnan(number) else number
    percent = _number(info.get("percent_indexed", 1))
    return IndexStats(
        num_docs=int(_number(info.get("num_docs", 0))),
        max_doc_id=int(_number(info.get("max_doc_id", 0))),
        num_terms=int(_number(info.get("num_terms", 0))),
        num_records=int(_number(info.get("num_records", 0))),
        hash_indexing_failures=int(_number(info.get("hash_indexing_failures", 0))),
        indexing=bool(int(_number(info.get("indexing", 0)))),
        percent_indexed=1.0 if math.isnan(percent) else percent,
        sizes_mb=sizes,
    )
