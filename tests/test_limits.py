"""Every attribute of a target schema is range-checked at plan time (issue 13).

Each limit is tried at its edge: the last value the server takes and the first it does
not. The rules are pure; one test drives ``redismigrate plan`` to show a bad value is one
line on stderr, exit 2 and no plan file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from redismigrate.capabilities import ServerCapabilities
from redismigrate.cli.wizard import (
    Refused,
    _positive_float_or_blank,
    _separator_or_blank,
    _whole_in_or_blank,
)
from redismigrate.errors import SchemaError
from redismigrate.ftinfo import IndexStats
from redismigrate.limits import (
    LANGUAGES,
    LLONG_MAX,
    SVS_COMPRESSIONS,
    VECTOR_LIMITS,
    field_problems,
    index_problems,
    range_problems,
    schema_problems,
)
from redismigrate.patch import SchemaPatch, parse_field
from redismigrate.plan import build_plan
from redismigrate.preflight import parameters_check
from redismigrate.render import ft_create_args
from redismigrate.schema import (
    IndexInfo,
    IndexOptions,
    IndexSchema,
    TagAttrs,
    TagField,
    TextAttrs,
    TextField,
    VectorAttrs,
    VectorField,
)
from tests.test_cli import assert_one_line_error, cli
from tests.test_planner import base_schema, load_docs

REDIS_8_2 = ServerCapabilities(
    redis_version="8.2.0", search_version=(8, 2, 0), json_version=(8, 2, 0)
)


def vector(algorithm: str, **attrs: Any) -> VectorField:
    """A vector field built without any check, so the rules see the raw value."""
    base: dict[str, Any] = {"dims": 8, "algorithm": algorithm, "datatype": "float32"}
    return VectorField(name="v", attrs=VectorAttrs(**{**base, **attrs}))


def problems_of(algorithm: str, **attrs: Any) -> list[str]:
    return field_problems(vector(algorithm, **attrs))


# (algorithm, attribute, last good value, first bad value) at each end of each range
EDGES: list[tuple[str, str, Any, Any]] = [
    ("flat", "dims", 1, 0),
    ("flat", "dims", LLONG_MAX, LLONG_MAX + 1),
    ("flat", "block_size", 1, 0),
    ("flat", "block_size", LLONG_MAX, LLONG_MAX + 1),
    ("flat", "initial_cap", 0, -1),
    ("flat", "initial_cap", LLONG_MAX, LLONG_MAX + 1),
    ("hnsw", "dims", 1, 0),
    ("hnsw", "initial_cap", 0, -1),
    ("hnsw", "m", 2, 1),
    ("hnsw", "m", 32767, 32768),
    ("hnsw", "ef_construction", 1, 0),
    ("hnsw", "ef_construction", LLONG_MAX, LLONG_MAX + 1),
    ("hnsw", "ef_runtime", 1, 0),
    ("hnsw", "ef_runtime", LLONG_MAX, LLONG_MAX + 1),
    ("hnsw", "epsilon", 0.0, -1e-9),
    ("hnsw", "epsilon", 1e300, math.inf),
    ("svs-vamana", "dims", 1, 0),
    ("svs-vamana", "graph_max_degree", 1, 0),
    ("svs-vamana", "graph_max_degree", LLONG_MAX, LLONG_MAX + 1),
    ("svs-vamana", "construction_window_size", 1, 0),
    ("svs-vamana", "construction_window_size", LLONG_MAX, LLONG_MAX + 1),
    ("svs-vamana", "search_window_size", 1, 0),
    ("svs-vamana", "search_window_size", LLONG_MAX, LLONG_MAX + 1),
    ("svs-vamana", "epsilon", 0.0, -1e-9),
    ("svs-vamana", "epsilon", 1e300, math.nan),
]


@pytest.mark.parametrize(("algorithm", "attr", "good", "bad"), EDGES)
def test_each_vector_limit_at_its_edge(algorithm: str, attr: str, good: Any, bad: Any) -> None:
    assert problems_of(algorithm, **{attr: good}) == []
    found = problems_of(algorithm, **{attr: bad})
    assert len(found) == 1, found
    label = VECTOR_LIMITS[algorithm][attr].label
    assert found[0].startswith(f"vector field 'v': {attr} = {bad!r} is out of range; {label}")


def test_every_vector_limit_has_an_edge_test() -> None:
    tested = {(algorithm, attr) for algorithm, attr, _, _ in EDGES}
    for algorithm, limits in VECTOR_LIMITS.items():
        for attr in limits:
            if attr == "training_threshold":
                continue  # needs a compression: its own test below
            assert (algorithm, attr) in tested, (algorithm, attr)


def test_the_line_names_field_attribute_value_and_range() -> None:
    assert problems_of("hnsw", m=-5) == [
        "vector field 'v': m = -5 is out of range; HNSW M takes a whole number from 2 to 32767"
    ]
    assert problems_of("hnsw", ef_runtime=0) == [
        "vector field 'v': ef_runtime = 0 is out of range; HNSW EF_RUNTIME takes a whole "
        f"number from 1 to {LLONG_MAX}"
    ]


def test_training_threshold_needs_a_compression_and_1024_to_102400() -> None:
    lvq = {"compression": "LVQ8"}
    assert problems_of("svs-vamana", training_threshold=1024, **lvq) == []
    assert "from 1024 to 102400" in problems_of("svs-vamana", training_threshold=1023, **lvq)[0]
    assert problems_of("svs-vamana", training_threshold=102400, **lvq) == []
    assert "from 1024 to 102400" in problems_of("svs-vamana", training_threshold=102401, **lvq)[0]
    (alone,) = problems_of("svs-vamana", training_threshold=2048)
    assert "training_threshold = 2048 needs a compression" in alone


def test_reduce_needs_leanvec_and_stays_below_dims() -> None:
    lean = {"compression": "LeanVec4x8"}
    assert problems_of("svs-vamana", reduce=1, **lean) == []
    assert "from 1 to 7" in problems_of("svs-vamana", reduce=0, **lean)[0]
    assert problems_of("svs-vamana", reduce=7, **lean) == []
    assert "from 1 to 7" in problems_of("svs-vamana", reduce=8, **lean)[0]
    assert problems_of("svs-vamana", reduce=4, compression="leanvec8x8") == []
    (lvq,) = problems_of("svs-vamana", reduce=4, compression="LVQ8")
    assert "needs a LeanVec compression" in lvq
    (none,) = problems_of("svs-vamana", reduce=4)
    assert "needs a LeanVec compression" in none
    (tiny,) = problems_of("svs-vamana", dims=1, reduce=1, **lean)
    assert "no smaller dimension" in tiny


@pytest.mark.parametrize("name", [*SVS_COMPRESSIONS, "lvq4X8", "LEANVEC8X8"])
def test_every_compression_name_is_taken_without_case(name: str) -> None:
    assert problems_of("svs-vamana", compression=name) == []


def test_an_unknown_compression_is_named_once() -> None:
    (problem,) = problems_of("svs-vamana", compression="LVQ2", reduce=3)
    assert "compression = 'LVQ2' is out of range" in problem and "LeanVec8x8" in problem


def test_text_weight_is_any_finite_number() -> None:
    def weight(value: float) -> list[str]:
        return field_problems(TextField(name="t", attrs=TextAttrs(weight=value)))

    assert weight(0.0) == [] and weight(1e300) == [] and weight(-2.5) == []
    for bad in (math.nan, math.inf, -math.inf):
        (problem,) = weight(bad)
        assert problem.startswith(f"text field 't': weight = {bad!r} is out of range")
        assert "a finite number" in problem


def test_tag_separator_is_one_byte() -> None:
    def separator(value: str) -> list[str]:
        return field_problems(TagField(name="g", attrs=TagAttrs(separator=value)))

    assert separator("|") == [] and separator(";") == []
    (problem,) = separator("é")  # one character, two bytes: the server counts bytes
    assert "separator = 'é' is out of range" in problem
    with pytest.raises(SchemaError, match="one character"):
        parse_field({"name": "g", "type": "tag", "attrs": {"separator": "ab"}}, source="p")


def test_index_score_is_0_to_1_and_language_is_one_the_server_knows() -> None:
    def index(**options: Any) -> list[str]:
        return index_problems(IndexInfo(name="i", options=IndexOptions(**options)))

    assert index(score=0.0) == [] and index(score=1.0) == []
    assert "score = -0.01 is out of range" in index(score=-0.01)[0]
    assert "score = 1.01 is out of range" in index(score=1.01)[0]
    assert index(language="french") == [] and index(language="Chinese") == []
    assert "language = 'klingon' is out of range" in index(language="klingon")[0]
    assert len(LANGUAGES) == 29


def test_svs_datatype_is_in_schema_problems_but_left_to_the_server_check() -> None:
    schema = IndexSchema(
        index=IndexInfo(name="i", prefix="p:"),
        fields=[vector("svs-vamana", datatype="float64")],
    )
    assert range_problems(schema) == []
    (problem,) = schema_problems(schema)
    assert "datatype = 'float64' is out of range; SVS-VAMANA takes float16 or float32" in problem
    fine = IndexSchema(index=schema.index, fields=[vector("svs-vamana", datatype="float16")])
    assert schema_problems(fine) == []


def test_schema_and_patch_files_refuse_a_bad_value_in_one_line() -> None:
    data = base_schema("i", "p:", "hash").to_dict()
    data["fields"][-1]["attrs"]["m"] = -5
    with pytest.raises(SchemaError) as caught:
        IndexSchema.from_dict(data, source="target.yaml")
    assert str(caught.value) == (
        "target.yaml: vector field 'embedding': m = -5 is out of range; "
        "HNSW M takes a whole number from 2 to 32767"
    )
    with pytest.raises(SchemaError, match="ef_runtime = 0"):
        SchemaPatch.from_dict(
            {
                "changes": {
                    "add_fields": [
                        {
                            "name": "x",
                            "type": "vector",
                            "attrs": {"dims": 4, "algorithm": "hnsw", "ef_runtime": 0},
                        }
                    ]
                }
            }
        )


def planned(changes: dict[str, Any]) -> Any:
    return build_plan(
        source_schema=base_schema("idx", "doc:", "hash"),
        source_stats=IndexStats(num_docs=10),
        key_sample=["doc:1"],
        capabilities=REDIS_8_2,
        patch=SchemaPatch.from_dict({"changes": changes}),
    )


def test_the_planner_refuses_a_bad_update_with_exit_2() -> None:
    update = {"update_fields": [{"name": "embedding", "attrs": {"m": -5}}]}
    with pytest.raises(SchemaError) as caught:
        planned(update)
    assert caught.value.exit_code == 2
    assert "update field 'embedding'" in str(caught.value)
    assert "m = -5 is out of range" in str(caught.value)
    with pytest.raises(SchemaError, match=r"weight = inf is out of range"):
        planned({"update_fields": [{"name": "title", "attrs": {"weight": math.inf}}]})
    with pytest.raises(SchemaError, match=r"changes\.index\.options: index option score = 2\.0"):
        planned({"index": {"options": {"score": 2.0}}})
    assert planned({"update_fields": [{"name": "embedding", "attrs": {"m": 2}}]}).supported


def test_a_source_field_out_of_range_blocks_the_plan() -> None:
    # FT.CREATE answers OK for M 1 (the index breaks on its first vector), so an index
    # read from the server can carry it; the plan keeps it only as a block
    source = base_schema("idx", "doc:", "hash")
    embedding = source.fields[-1]
    assert isinstance(embedding, VectorField)
    broken = VectorField(name="embedding", attrs=VectorAttrs(**{**_attrs(embedding.attrs), "m": 1}))
    schema = IndexSchema(index=source.index, fields=[*source.fields[:-1], broken])
    result = build_plan(
        source_schema=schema,
        source_stats=IndexStats(num_docs=10),
        key_sample=["doc:1"],
        capabilities=REDIS_8_2,
        patch=SchemaPatch.from_dict({"changes": {"remove_fields": ["loc"]}}),
    )
    assert not result.supported
    assert any(
        "m = 1 is out of range" in b.reason for b in result.diff_classification.blocked_reasons
    )


def _attrs(a: VectorAttrs) -> dict[str, Any]:
    return {k: getattr(a, k) for k in a.__struct_fields__}


def test_parameters_preflight_line() -> None:
    good = base_schema("i", "p:", "hash")
    check = parameters_check(good)
    assert (check.check, check.status) == ("parameters", "pass")
    assert check.detail == "every attribute of the target schema is in range"
    bad = IndexSchema(
        index=IndexInfo(name="i", prefix="p:", options=IndexOptions(score=3.0)),
        fields=[
            vector("hnsw", m=0, ef_runtime=0),
            TextField(name="t", attrs=TextAttrs(weight=math.nan)),
        ],
    )
    blocked = parameters_check(bad)
    assert blocked.status == "block"
    for needle in ("score = 3.0", "m = 0", "ef_runtime = 0", "weight = nan"):
        assert needle in blocked.detail
    assert "\n" not in blocked.detail


def test_the_wizard_asks_again_for_a_value_out_of_range() -> None:
    m = _whole_in_or_blank(VECTOR_LIMITS["hnsw"]["m"])
    assert m("") is None and m("2") == 2 and m("32767") == 32767
    for bad in ("1", "32768", "-5", "x"):
        with pytest.raises(Refused, match="HNSW M takes a whole number from 2 to 32767"):
            m(bad)
    ef = _whole_in_or_blank(VECTOR_LIMITS["hnsw"]["ef_runtime"])
    assert ef("1") == 1
    with pytest.raises(Refused):
        ef("0")
    for bad in ("nan", "inf"):
        with pytest.raises(Refused, match="finite"):
            _positive_float_or_blank(bad)
    with pytest.raises(Refused, match="single-byte"):
        _separator_or_blank("é")
    assert _separator_or_blank("|") == "|"


# ------------------------------------------------------------------- through the CLI


@pytest.fixture
def hnsw_index(sync_client: redis.Redis, ns: str) -> str:
    schema = base_schema(f"{ns}_lim", f"{ns}:lim:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load_docs(sync_client, f"{ns}:lim:", "hash", docs=20)
    return schema.name


def test_plan_with_m_minus_5_exits_2_in_one_line_and_writes_no_plan(
    redis_url: str, hnsw_index: str, tmp_path: Path
) -> None:
    patch = tmp_path / "patch.yaml"
    patch.write_text(
        "version: 1\nchanges:\n  update_fields:\n    - {name: embedding, attrs: {m: -5}}\n"
    )
    out = tmp_path / "plan.yaml"
    result = cli(
        "plan", "--index", hnsw_index, "--schema-patch", str(patch), "--url", redis_url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert_one_line_error(result, 2, "'embedding'", "m = -5", "from 2 to 32767")
    assert not out.exists()

    target = base_schema(hnsw_index, "x:", "hash").to_dict()
    target["fields"][-1]["attrs"]["ef_construction"] = 0
    target_file = tmp_path / "target.yaml"
    target_file.write_text(yaml.safe_dump(target))
    result = cli(
        "plan", "--index", hnsw_index, "--target-schema", str(target_file), "--url", redis_url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert_one_line_error(result, 2, "ef_construction = 0", "HNSW EF_CONSTRUCTION")
    assert not out.exists()
