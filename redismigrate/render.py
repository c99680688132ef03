"""Render the schema model as FT.CREATE arguments. Pure code."""

from __future__ import annotations

from redismigrate.schema import (
    Field,
    GeoField,
    GeoShapeField,
    IndexSchema,
    NumericField,
    TagField,
    TextField,
    VectorAttrs,
    VectorField,
    default_json_path,
)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def ft_create_args(
    schema: IndexSchema, *, index_name: str | None = None, skip_initial_scan: bool = False
) -> list[str]:
    """``FT.CREATE`` and its arguments for ``schema`` (optionally under another name).

    ``skip_initial_scan``: index only documents written from now on (the server still
    rebuilds the whole index when it reloads its data).
    """
    opts = schema.index.options
    args: list[str] = ["FT.CREATE", index_name or schema.index.name]
    args += ["ON", schema.index.storage_type.upper()]
    prefixes = schema.prefixes
    if prefixes != [""]:
        args += ["PREFIX", str(len(prefixes)), *prefixes]
    if opts.filter is not None:
        args += ["FILTER", opts.filter]
    if opts.language is not None:
        args += ["LANGUAGE", opts.language]
    if opts.language_field is not None:
        args += ["LANGUAGE_FIELD", opts.language_field]
    if opts.score is not None:
        args += ["SCORE", _number(opts.score)]
    if opts.score_field is not None:
        args += ["SCORE_FIELD", opts.score_field]
    if opts.payload_field is not None:
        args += ["PAYLOAD_FIELD", opts.payload_field]
    if opts.indexes_all:
        args += ["INDEXALL", "ENABLE"]
    if opts.max_text_fields:
        args.append("MAXTEXTFIELDS")
    if opts.no_offsets:
        args.append("NOOFFSETS")
    if opts.no_highlight and not opts.no_offsets:
        args.append("NOHL")
    if opts.no_fields:
        args.append("NOFIELDS")
    if opts.no_freqs:
        args.append("NOFREQS")
    if opts.stopwords is not None:
        args += ["STOPWORDS", str(len(opts.stopwords)), *opts.stopwords]
    if skip_initial_scan:
        args.append("SKIPINITIALSCAN")
    args.append("SCHEMA")
    for field in schema.fields:
        args += field_args(field, schema.index.storage_type)
    return args


def field_args(field: Field, storage_type: str) -> list[str]:
    """The SCHEMA part for one field: ``identifier [AS name] TYPE options...``."""
    if storage_type == "json":
        identifier = field.path or default_json_path(field.name)
    else:
        identifier = field.path or field.name
    out = [identifier]
    if identifier != field.name:
        out += ["AS", field.name]
    if isinstance(field, TextField):
        a = field.attrs
        out.append("TEXT")
        if a.no_stem:
            out.append("NOSTEM")
        if a.weight != 1.0:
            out += ["WEIGHT", _number(a.weight)]
        if a.phonetic_matcher:
            out += ["PHONETIC", a.phonetic_matcher]
        if a.withsuffixtrie:
            out.append("WITHSUFFIXTRIE")
        out += _trailing(a.index_empty, a.index_missing, a.sortable, a.unf, a.no_index)
    elif isinstance(field, TagField):
        t = field.attrs
        out.append("TAG")
        if t.separator is not None:
            out += ["SEPARATOR", t.separator]
        if t.case_sensitive:
            out.append("CASESENSITIVE")
        if t.withsuffixtrie:
            out.append("WITHSUFFIXTRIE")
        out += _trailing(t.index_empty, t.index_missing, t.sortable, t.unf, t.no_index)
    elif isinstance(field, NumericField):
        n = field.attrs
        out.append("NUMERIC")
        out += _trailing(False, n.index_missing, n.sortable, n.unf, n.no_index)
    elif isinstance(field, GeoField):
        g = field.attrs
        out.append("GEO")
        out += _trailing(False, g.index_missing, g.sortable, False, g.no_index)
    elif isinstance(field, GeoShapeField):
        s = field.attrs
        out += ["GEOSHAPE", s.coord_system.upper()]
        out += _trailing(False, s.index_missing, False, False, s.no_index)
    elif isinstance(field, VectorField):
        out += ["VECTOR", *vector_args(field.attrs)]
        if field.attrs.index_missing:
            out.append("INDEXMISSING")
    return out


def _trailing(
    index_empty: bool, index_missing: bool, sortable: bool, unf: bool, no_index: bool
) -> list[str]:
    # The server parses these generic options after the type-specific ones.
    out: list[str] = []
    if index_empty:
        out.append("INDEXEMPTY")
    if index_missing:
        out.append("INDEXMISSING")
    if sortable:
        out.append("SORTABLE")
        if unf:
            out.append("UNF")
    if no_index:
        out.append("NOINDEX")
    return out


def vector_args(a: VectorAttrs) -> list[str]:
    """``ALGORITHM n TYPE .. DIM .. DISTANCE_METRIC .. [params]`` for one vector field."""
    params = [
        "TYPE",
        a.datatype.upper(),
        "DIM",
        str(a.dims),
        "DISTANCE_METRIC",
        a.distance_metric.upper(),
    ]
    optional: list[tuple[str, object]] = [
        ("INITIAL_CAP", a.initial_cap),
        ("BLOCK_SIZE", a.block_size),
        ("M", a.m),
        ("EF_CONSTRUCTION", a.ef_construction),
        ("EF_RUNTIME", a.ef_runtime),
        ("EPSILON", a.epsilon),
        ("GRAPH_MAX_DEGREE", a.graph_max_degree),
        ("CONSTRUCTION_WINDOW_SIZE", a.construction_window_size),
        ("SEARCH_WINDOW_SIZE", a.search_window_size),
        ("COMPRESSION", a.compression),
        ("REDUCE", a.reduce),
        ("TRAINING_THRESHOLD", a.training_threshold),
    ]
    for word, value in optional:
        if value is not None:
            params += [word, _number(value) if isinstance(value, float) else str(value)]
    return [a.algorithm.upper(), str(len(params)), *params]
