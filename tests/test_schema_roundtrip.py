"""The round-trip law against the real server.

For a schema ``s``: FT.CREATE from ``render(s)``, read the index back from
FT.INFO, and the result equals ``s`` (in its canonical form, which is ``s``
itself for every schema written in canonical form). Checked for every field
kind and attribute, hash and JSON, over both reply shapes (RESP2 and RESP3).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import read_schema, server_capabilities
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema


def _with_protocol(url: str, protocol: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}protocol={protocol}"


def read_back(url: str, name: str, protocol: int) -> IndexSchema:
    async def work() -> IndexSchema:
        async with connect(_with_protocol(url, protocol)) as client:
            return await read_schema(client, name)

    return anyio.run(work)


def search_version(url: str) -> tuple[int, int, int]:
    async def work() -> tuple[int, int, int]:
        async with connect(url) as client:
            return (await server_capabilities(client)).search_version

    return anyio.run(work)


def create(client: redis.Redis, schema: IndexSchema) -> None:
    client.execute_command(*ft_create_args(schema))


def assert_round_trip(client: redis.Redis, url: str, schema: IndexSchema) -> None:
    create(client, schema)
    try:
        for protocol in (2, 3):
            got = read_back(url, schema.name, protocol)
            # dicts first: their diff is readable
            assert got.to_dict() == schema.canonical().to_dict(), f"RESP{protocol}"
            assert got == schema.canonical()
            assert got.canonical() == got
    finally:
        client.execute_command("FT.DROPINDEX", schema.name)


def everything_schema(name: str, prefix: str, storage: str) -> IndexSchema:
    """One index holding every field kind, each with as many attributes as the server allows."""
    is_json = storage == "json"

    def field(name: str, type_: str, attrs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "type": type_, "attrs": attrs}
        if is_json:
            out["path"] = f"$.{name}_doc"
        return out

    return IndexSchema.from_dict(
        {
            "index": {
                "name": name,
                "prefix": [f"{prefix}:a:", f"{prefix}:b:"],
                "storage_type": storage,
                "options": {
                    "language": "german",
                    "score": 0.5,
                    "stopwords": ["alpha", "beta"],
                    "max_text_fields": True,
                    "no_freqs": True,
                },
            },
            "fields": [
                field(
                    "title",
                    "text",
                    {
                        "weight": 2.5,
                        "no_stem": True,
                        "phonetic_matcher": "dm:en",
                        "withsuffixtrie": True,
                        "index_empty": True,
                        "index_missing": True,
                        "sortable": True,
                        "unf": True,
                    },
                ),
                field("body", "text", {"sortable": True, "no_index": True}),
                field(
                    "tags",
                    "tag",
                    {
                        "separator": "|",
                        "case_sensitive": True,
                        "withsuffixtrie": True,
                        "index_empty": True,
                        "index_missing": True,
                        "sortable": True,
                        "unf": True,
                    },
                ),
                field("plain_tag", "tag", {"sortable": True, "no_index": True}),
                field("price", "numeric", {"sortable": True, "unf": True, "no_index": True}),
                field("rank", "numeric", {"index_missing": True}),
                field("where", "geo", {"sortable": True, "no_index": True}),
                field("near", "geo", {"index_missing": True}),
                field("area", "geoshape", {"coord_system": "flat", "index_missing": True}),
                field("zone", "geoshape", {"no_index": True}),
                field(
                    "emb_hnsw",
                    "vector",
                    {
                        "dims": 8,
                        "algorithm": "hnsw",
                        "datatype": "float16",
                        "distance_metric": "cosine",
                        "m": 12,
                        "ef_construction": 150,
                        "ef_runtime": 25,
                        "epsilon": 0.05,
                        "index_missing": True,
                    },
                ),
                field(
                    "emb_flat",
                    "vector",
                    {
                        "dims": 4,
                        "algorithm": "flat",
                        "datatype": "bfloat16",
                        "distance_metric": "l2",
                        "block_size": 512,
                    },
                ),
                field(
                    "emb_ip",
                    "vector",
                    {
                        "dims": 3,
                        "algorithm": "flat",
                        "datatype": "float64",
                        "distance_metric": "ip",
                        "block_size": 1024,
                    },
                ),
            ],
        }
    ).canonical()


@pytest.mark.parametrize("storage", ["hash", "json"])
def test_every_field_kind_and_attribute_round_trips(
    sync_client: redis.Redis, redis_url: str, ns: str, storage: str
) -> None:
    schema = everything_schema(f"{ns}_all_{storage}", ns, storage)
    assert_round_trip(sync_client, redis_url, schema)


def test_hash_fields_with_aliases_and_index_options_round_trip(
    sync_client: redis.Redis, redis_url: str, ns: str
) -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {
                "name": f"{ns}_alias",
                "prefix": f"{ns}:",
                "storage_type": "hash",
                "options": {
                    "filter": "@price>10",
                    "language_field": "lang",
                    "score_field": "doc_score",
                    "payload_field": "payload",
                    "no_offsets": True,
                    "no_fields": True,
                    "stopwords": [],
                },
            },
            "fields": [
                {"name": "title", "type": "text", "path": "raw_title"},
                {"name": "price", "type": "numeric"},
                {"name": "kind", "type": "tag", "path": "raw_kind", "attrs": {"separator": ";"}},
            ],
        }
    ).canonical()
    assert_round_trip(sync_client, redis_url, schema)


def test_json_default_tag_separator_and_unaliased_path_round_trip(
    sync_client: redis.Redis, redis_url: str, ns: str
) -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": f"{ns}_j", "prefix": f"{ns}:", "storage_type": "json"},
            "fields": [
                {"name": "$.labels[*]", "type": "tag"},
                {"name": "kind", "type": "tag", "attrs": {"separator": ","}},
                {"name": "n", "type": "numeric", "path": "$.nested.n"},
            ],
        }
    ).canonical()
    assert_round_trip(sync_client, redis_url, schema)


def test_a_schema_written_by_hand_reads_back_as_its_canonical_form(
    sync_client: redis.Redis, redis_url: str, ns: str
) -> None:
    # the short layout people write, leaving every default out
    written = IndexSchema.from_yaml(
        f"""
version: '0.1.0'
index:
  name: {ns}_hand
  prefix: "{ns}:"
  storage_type: hash
fields:
  - name: title
    type: text
    attrs: {{sortable: true}}
  - name: n
    type: numeric
    attrs: {{sortable: true}}
  - name: embedding
    type: vector
    attrs: {{dims: 16, algorithm: HNSW, datatype: FLOAT32, distance_metric: COSINE}}
"""
    )
    create(sync_client, written)
    try:
        got = read_back(redis_url, written.name, 2)
        assert got == written.canonical()
        assert got.same_index_as(written)
        vector = got.field("embedding")
        assert vector is not None and vector.attrs.ef_runtime == 10  # type: ignore[union-attr]
    finally:
        sync_client.execute_command("FT.DROPINDEX", written.name)


# ----------------------------------------------------------------- property-based


def _flag() -> st.SearchStrategy[bool]:
    return st.booleans()


@st.composite
def field_dicts(
    draw: st.DrawFn, name: str, storage: str, vector_types: list[str]
) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "tag", "numeric", "geo", "geoshape", "vector"]))
    attrs: dict[str, Any] = {}
    no_index = draw(_flag()) if kind != "vector" else False
    missing = draw(_flag()) and not no_index
    if kind in ("text", "tag"):
        sortable = draw(_flag()) or no_index
        attrs.update(
            sortable=sortable,
            unf=sortable and draw(_flag()),
            no_index=no_index,
            index_missing=missing,
            index_empty=draw(_flag()),
            withsuffixtrie=draw(_flag()),
        )
        if kind == "text":
            attrs.update(
                weight=draw(st.sampled_from([1.0, 0.5, 2.0, 3.25])),
                no_stem=draw(_flag()),
                phonetic_matcher=draw(st.sampled_from([None, "dm:en"])) if not no_index else None,
            )
        else:
            attrs.update(
                separator=draw(st.sampled_from([None, ";", "|", ","])),
                case_sensitive=draw(_flag()),
            )
    elif kind in ("numeric", "geo"):
        sortable = draw(_flag()) or no_index
        attrs.update(sortable=sortable, no_index=no_index, index_missing=missing)
    elif kind == "geoshape":
        attrs.update(
            coord_system=draw(st.sampled_from(["spherical", "flat"])),
            no_index=no_index,
            index_missing=missing,
        )
    else:
        algorithm = draw(st.sampled_from(["flat", "hnsw"]))
        attrs.update(
            dims=draw(st.integers(1, 64)),
            algorithm=algorithm,
            datatype=draw(st.sampled_from(vector_types)),
            distance_metric=draw(st.sampled_from(["cosine", "l2", "ip"])),
            index_missing=draw(_flag()),
        )
        if algorithm == "hnsw":
            attrs.update(
                m=draw(st.integers(4, 64)),
                ef_construction=draw(st.integers(10, 400)),
                ef_runtime=draw(st.integers(5, 100)),
                epsilon=draw(st.sampled_from([0.01, 0.02, 0.5])),
            )
        else:
            attrs.update(block_size=draw(st.sampled_from([128, 1024, 4096])))
    field: dict[str, Any] = {"name": name, "type": kind, "attrs": attrs}
    if storage == "json":
        field["path"] = f"$.{name}"
    elif draw(_flag()):
        field["path"] = f"src_{name}"
    return field


@st.composite
def schemas(draw: st.DrawFn, name: str, prefix: str, vector_types: list[str]) -> IndexSchema:
    storage = draw(st.sampled_from(["hash", "json"]))
    count = draw(st.integers(1, 5))
    fields = [draw(field_dicts(f"f{i}", storage, vector_types)) for i in range(count)]
    options = {
        "language": draw(st.sampled_from([None, "english", "french"])),
        "score": draw(st.sampled_from([None, 0.25, 1.0])),
        "no_offsets": draw(_flag()),
        "no_freqs": draw(_flag()),
        "no_fields": draw(_flag()),
        "max_text_fields": draw(_flag()),
        "stopwords": draw(st.sampled_from([None, [], ["foo", "bar"]])),
    }
    prefixes = draw(st.sampled_from([[f"{prefix}:"], [f"{prefix}:x:", f"{prefix}:y:"]]))
    return IndexSchema.from_dict(
        {
            "index": {
                "name": name,
                "prefix": prefixes,
                "storage_type": storage,
                "options": options,
            },
            "fields": fields,
        }
    )


def test_random_schemas_round_trip(sync_client: redis.Redis, redis_url: str, ns: str) -> None:
    version = search_version(redis_url)
    vector_types = ["float32", "float64", "float16", "bfloat16"]
    if version >= (8, 0, 0):
        vector_types += ["int8", "uint8"]
    counter = iter(range(10**6))

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        name = f"{ns}_h{next(counter)}"
        schema = data.draw(schemas(name, ns, vector_types))
        assert_round_trip(sync_client, redis_url, schema)

    check()
