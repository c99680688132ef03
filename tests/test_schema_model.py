"""Pure tests of the schema model, FT.INFO reading, rendering and capabilities (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from redismigrate.capabilities import ServerCapabilities, parse_module_version
from redismigrate.errors import SchemaError
from redismigrate.ftinfo import schema_from_ft_info, stats_from_ft_info
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema, TagField, VectorField

REDISVL_STYLE = """
version: '0.1.0'
index:
  name: products
  prefix: product
  key_separator: ':'
  storage_type: hash
fields:
  - name: title
    type: text
    attrs:
      weight: 2
      no_stem: true
  - name: category
    type: tag
    attrs:
      separator: "|"
      case_sensitive: true
  - name: price
    type: numeric
    attrs:
      sortable: true
  - name: location
    type: geo
  - name: embedding
    type: vector
    attrs:
      dims: 384
      algorithm: HNSW
      datatype: FLOAT32
      distance_metric: COSINE
      m: 16
      ef_construction: 200
"""


def test_a_redisvl_style_schema_loads_unchanged() -> None:
    schema = IndexSchema.from_yaml(REDISVL_STYLE)
    assert schema.name == "products"
    assert schema.prefixes == ["product"]
    assert schema.field_names == ["title", "category", "price", "location", "embedding"]
    vector = schema.field("embedding")
    assert isinstance(vector, VectorField)
    assert (vector.attrs.algorithm, vector.attrs.datatype, vector.attrs.distance_metric) == (
        "hnsw",
        "float32",
        "cosine",
    )
    assert vector.attrs.bytes_per_vector == 384 * 4
    tag = schema.field("category")
    assert isinstance(tag, TagField) and tag.attrs.separator == "|"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_files_round_trip_identically(tmp_path: Path, suffix: str) -> None:
    schema = IndexSchema.from_yaml(REDISVL_STYLE)
    path = tmp_path / f"schema{suffix}"
    schema.dump(path)
    # a vector field is written in full (its defaults filled in): the same index
    assert IndexSchema.load(path).same_index_as(schema)
    assert IndexSchema.load(path).to_dict() == schema.to_dict()
    canonical = tmp_path / f"canonical{suffix}"
    schema.canonical().dump(canonical)
    assert IndexSchema.load(canonical) == schema.canonical()


def test_the_yaml_layout_is_the_one_people_write() -> None:
    text = IndexSchema.from_yaml(REDISVL_STYLE).to_yaml()
    lines = text.splitlines()
    assert lines[0] == "version: 0.1.0"
    assert "index:" in lines and "fields:" in lines
    assert "- name: title" in lines
    # defaults are left out, but for a vector field's algorithm, datatype, metric and
    # parameters (RedisVL needs the algorithm; a reader sees what the index uses)
    assert "no_index" not in text and "withsuffixtrie" not in text
    vector = lines[lines.index("- name: embedding") :]
    for needed in ("algorithm: hnsw", "datatype: float32", "distance_metric: cosine"):
        assert f"    {needed}" in vector
    for needed in ("m: 16", "ef_construction: 200", "ef_runtime: 10", "epsilon: 0.01"):
        assert f"    {needed}" in vector


def test_canonical_form_fills_defaults_and_is_idempotent() -> None:
    schema = IndexSchema.from_yaml(REDISVL_STYLE)
    canonical = schema.canonical()
    vector = canonical.field("embedding")
    assert isinstance(vector, VectorField)
    assert vector.attrs.ef_runtime == 10 and vector.attrs.epsilon == 0.01
    numeric = canonical.field("price")
    assert numeric is not None and numeric.attrs.unf is True  # type: ignore[union-attr]
    assert canonical.canonical() == canonical
    assert schema.same_index_as(canonical)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("index: {name: a}\nfields:\n  - {name: t, type: text, attrs: {wieght: 2}}", "wieght"),
        (
            "index: {name: a}\nfields:\n  - {name: v, type: vector, attrs: {algorithm: flat}}",
            "dims",
        ),
        (
            "index: {name: a}\nfields:\n"
            "  - {name: v, type: vector, attrs: {dims: 4, datatype: f8}}",
            "datatype 'f8'",
        ),
        ("index: {name: a}\nfields:\n  - {name: t, type: txt}", "type 'txt'"),
        ("index: {name: a}\nfields:\n  - {name: t, type: text}\n  - {name: t, type: tag}", "twice"),
        ("fields: []", "missing the 'index' section"),
        ("version: 9\nindex: {name: a}", "version '9'"),
        ("index: {name: a, colour: red}", "colour"),
        ("index: [", "not valid YAML"),
        (
            "index: {name: a}\nfields:\n  - {name: v, type: vector, attrs: {dims: 4, m: 8}}",
            "m does not apply to algorithm flat",
        ),
        (
            "index: {name: a}\nfields:\n  - {name: n, type: numeric, "
            "attrs: {no_index: true, index_missing: true}}",
            "both no_index and index_missing",
        ),
        ("index: {name: a}\nfields:\n  - {name: t, type: tag, attrs: {separator: ab}}", "one char"),
    ],
)
def test_bad_schemas_are_refused_with_one_line_naming_the_problem(text: str, expected: str) -> None:
    with pytest.raises(SchemaError) as info:
        IndexSchema.from_yaml(text, source="s.yaml")
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith("s.yaml")


def test_missing_and_directory_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        IndexSchema.load(tmp_path / "nope.yaml")
    with pytest.raises(SchemaError, match="is a directory"):
        IndexSchema.load(tmp_path)


# ------------------------------------------------------------------ FT.INFO replies

RESP2_REPLY = [
    b"index_name", b"idx",
    b"index_options", [b"NOOFFSETS", b"NOHL"],
    b"index_definition", [b"key_type", b"HASH", b"prefixes", [b"doc:"], b"default_score", b"1"],
    b"attributes", [
        [b"identifier", b"title", b"attribute", b"title", b"type", b"TEXT", b"WEIGHT", b"2",
         b"SORTABLE", b"NOSTEM"],
        [b"identifier", b"raw", b"attribute", b"kind", b"type", b"TAG", b"SEPARATOR", b";",
         b"CASESENSITIVE"],
        [b"identifier", b"v", b"attribute", b"v", b"type", b"VECTOR", b"algorithm", b"HNSW",
         b"data_type", b"FLOAT16", b"dim", 8, b"distance_metric", b"L2", b"M", 8,
         b"ef_construction", 100],
    ],
    b"num_docs", 10, b"max_doc_id", 12, b"hash_indexing_failures", 1,
    b"indexing", 1, b"percent_indexed", b"0.5", b"vector_index_sz_mb", b"1.5",
    b"inverted_sz_mb", b"nan",
]  # fmt: skip

RESP3_REPLY = {
    b"index_name": b"idx",
    b"index_options": [b"NOOFFSETS", b"NOHL"],
    b"index_definition": {b"key_type": b"HASH", b"prefixes": [b"doc:"], b"default_score": 1.0},
    b"attributes": [
        {b"identifier": b"title", b"attribute": b"title", b"type": b"TEXT", b"WEIGHT": 2.0,
         b"flags": [b"SORTABLE", b"NOSTEM"]},
        {b"identifier": b"raw", b"attribute": b"kind", b"type": b"TAG", b"SEPARATOR": b";",
         b"flags": [b"CASESENSITIVE"]},
        {b"identifier": b"v", b"attribute": b"v", b"type": b"VECTOR", b"algorithm": b"HNSW",
         b"data_type": b"FLOAT16", b"dim": 8, b"distance_metric": b"L2", b"M": 8,
         b"ef_construction": 100, b"flags": []},
    ],
    b"num_docs": 10, b"max_doc_id": 12, b"hash_indexing_failures": 1,
    b"indexing": 1, b"percent_indexed": 0.5, b"vector_index_sz_mb": 1.5,
    b"inverted_sz_mb": float("nan"),
}  # fmt: skip


def test_resp2_and_resp3_replies_give_the_same_schema_and_stats() -> None:
    from_resp2 = schema_from_ft_info(RESP2_REPLY)
    from_resp3 = schema_from_ft_info(RESP3_REPLY)
    assert from_resp2 == from_resp3
    assert from_resp2.field("kind") is not None
    assert from_resp2.field("kind").path == "raw"  # type: ignore[union-attr]
    assert from_resp2.index.options.no_offsets and from_resp2.index.options.no_highlight
    stats2, stats3 = stats_from_ft_info(RESP2_REPLY), stats_from_ft_info(RESP3_REPLY)
    assert stats2 == stats3
    assert (stats2.num_docs, stats2.hash_indexing_failures, stats2.indexing) == (10, 1, True)
    assert stats2.percent_indexed == 0.5 and stats2.vector_index_mb == 1.5
    assert stats2.sizes_mb["inverted_sz_mb"] == 0.0


def test_vecsim_details_fill_what_ft_info_leaves_out() -> None:
    details = {
        b"ALGORITHM": b"TIERED",
        b"BACKEND_INDEX": [b"ALGORITHM", b"HNSW", b"M", 8, b"EF_CONSTRUCTION", 100,
                           b"EF_RUNTIME", 33, b"EPSILON", b"0.07"],
    }  # fmt: skip
    schema = schema_from_ft_info(RESP2_REPLY, vector_details={"v": details})
    vector = schema.field("v")
    assert isinstance(vector, VectorField)
    assert (vector.attrs.ef_runtime, vector.attrs.epsilon) == (33, 0.07)


def test_svs_vamana_and_int8_replies_parse_and_render() -> None:
    reply = {
        "index_name": "svs",
        "index_definition": {"key_type": "HASH", "prefixes": ["s:"]},
        "attributes": [
            {"identifier": "v", "attribute": "v", "type": "VECTOR", "algorithm": "SVS-VAMANA",
             "data_type": "FLOAT16", "dim": 64, "distance_metric": "COSINE",
             "graph_max_degree": 40, "construction_window_size": 250,
             "search_window_size": 20, "compression": "LVQ8", "epsilon": 0.01, "flags": []},
            {"identifier": "q", "attribute": "q", "type": "VECTOR", "algorithm": "FLAT",
             "data_type": "INT8", "dim": 16, "distance_metric": "L2", "flags": []},
        ],
    }  # fmt: skip
    schema = schema_from_ft_info(reply)
    svs, q = schema.field("v"), schema.field("q")
    assert isinstance(svs, VectorField) and isinstance(q, VectorField)
    assert svs.attrs.algorithm == "svs-vamana" and svs.attrs.compression == "LVQ8"
    assert svs.attrs.graph_max_degree == 40 and q.attrs.datatype == "int8"
    args = ft_create_args(schema)
    start = args.index("SVS-VAMANA")
    count = int(args[start + 1])
    assert args[start + 2 : start + 2 + count] == [
        "TYPE", "FLOAT16", "DIM", "64", "DISTANCE_METRIC", "COSINE", "EPSILON", "0.01",
        "GRAPH_MAX_DEGREE", "40", "CONSTRUCTION_WINDOW_SIZE", "250",
        "SEARCH_WINDOW_SIZE", "20", "COMPRESSION", "LVQ8",
    ]  # fmt: skip
    assert "INT8" in args


def test_render_puts_type_options_before_generic_ones() -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": "i", "prefix": ["a:", "b:"]},
            "fields": [
                {
                    "name": "t",
                    "type": "text",
                    "path": "raw_t",
                    "attrs": {"sortable": True, "unf": True, "withsuffixtrie": True},
                },
            ],
        }
    )
    assert ft_create_args(schema) == [
        "FT.CREATE", "i", "ON", "HASH", "PREFIX", "2", "a:", "b:", "SCHEMA",
        "raw_t", "AS", "t", "TEXT", "WITHSUFFIXTRIE", "SORTABLE", "UNF",
    ]  # fmt: skip


# ------------------------------------------------------------------ capabilities


def test_capabilities_follow_the_search_module_version() -> None:
    assert parse_module_version(21005) == (2, 10, 5)
    old = ServerCapabilities(redis_version="7.4.1", search_version=(2, 10, 5))
    assert old.supports_datatype("float16") and not old.supports_datatype("int8")
    assert not old.supports_algorithm("svs-vamana")
    eight = ServerCapabilities(redis_version="8.0.0", search_version=(8, 0, 0))
    assert eight.supports_datatype("uint8") and not eight.supports_algorithm("svs-vamana")
    eight_two = ServerCapabilities(redis_version="8.2.0", search_version=(8, 2, 0))
    assert eight_two.supports_algorithm("svs-vamana")


def test_capabilities_explain_what_a_server_cannot_take() -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": "i", "prefix": "p:"},
            "fields": [
                {"name": "a", "type": "vector", "attrs": {"dims": 4, "datatype": "int8"}},
                {
                    "name": "b",
                    "type": "vector",
                    "attrs": {"dims": 4, "algorithm": "svs-vamana", "datatype": "float64"},
                },
            ],
        }
    )
    old = ServerCapabilities(redis_version="7.4.1", search_version=(2, 10, 5))
    problems = old.problems_with(schema)
    assert any("datatype int8 needs search module 8.0.0" in p for p in problems)
    assert any("SVS-VAMANA needs search module 8.2.0" in p for p in problems)
    assert any("SVS-VAMANA takes only float16 or float32" in p for p in problems)
    new = ServerCapabilities(redis_version="8.2.0", search_version=(8, 2, 0))
    assert new.problems_with(schema) == [
        "vector field 'b': SVS-VAMANA takes only float16 or float32 vectors, not float64"
    ]
