"""Planning rules that need a newer server than the embedded one (INT8/UINT8, SVS-VAMANA):
checked on the pure planner with the capabilities such a server reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from redismigrate.capabilities import ServerCapabilities
from redismigrate.ftinfo import IndexStats
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, OtherIndex, build_plan
from redismigrate.quantize import Int8Symmetric, encode_query
from redismigrate.schema import IndexSchema

REDIS_8_0 = ServerCapabilities(
    redis_version="8.0.0", search_version=(8, 0, 0), json_version=(8, 0, 0)
)
REDIS_8_2 = ServerCapabilities(
    redis_version="8.2.0", search_version=(8, 2, 0), json_version=(8, 2, 0)
)


def source(metric: str = "cosine", datatype: str = "float32", storage: str = "hash") -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": "idx", "prefix": "doc:", "storage_type": storage},
            "fields": [
                {"name": "title", "type": "text"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": 16, "datatype": datatype, "distance_metric": metric},
                },
            ],
        }
    )


def sample(n: int = 500, dims: int = 16) -> np.ndarray:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(n, dims))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def plan(
    attrs: dict[str, Any],
    *,
    schema: IndexSchema | None = None,
    caps: ServerCapabilities = REDIS_8_0,
    **kwargs: Any,
) -> MigrationPlan:
    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "embedding", "attrs": attrs}]}}
    )
    return build_plan(
        source_schema=schema or source(),
        source_stats=IndexStats(num_docs=1000),
        key_sample=["doc:1"],
        capabilities=caps,
        patch=patch,
        vector_samples={"embedding": sample()},
        **kwargs,
    )


def reasons(result: MigrationPlan) -> str:
    return " | ".join(str(b) for b in result.diff_classification.blocked_reasons)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_int8_gets_one_symmetric_scale_in_the_plan(metric: str, tmp_path: Path) -> None:
    result = plan({"datatype": "int8"}, schema=source(metric))
    assert result.supported, reasons(result)
    (change,) = result.vector_changes
    assert isinstance(change.encoding, Int8Symmetric)
    data = sample()
    assert change.encoding.scale == pytest.approx(127 / np.quantile(np.abs(data), 0.9999))
    path = tmp_path / "plan.yaml"
    result.dump(path)
    loaded = MigrationPlan.load(path)
    assert loaded == result
    # applications encode their queries with the plan's rule
    query = data[0].astype(np.float32)
    expected = np.clip(np.rint(query.astype(np.float64) * change.encoding.scale), -127, 127)
    assert encode_query(query, loaded) == expected.astype(np.int8).tobytes()


def test_int8_with_cosine_uses_a_per_vector_scale() -> None:
    result = plan({"datatype": "int8"})
    assert result.supported
    assert result.vector_changes[0].encoding.__struct_config__.tag == "int8_per_vector"  # type: ignore[union-attr]


def test_uint8_rules_per_metric() -> None:
    l2 = plan({"datatype": "uint8"}, schema=source("l2"))
    assert l2.supported and l2.vector_changes[0].encoding.__struct_config__.tag == "uint8_affine"  # type: ignore[union-attr]
    cosine = plan({"datatype": "uint8"}, schema=source("cosine"))
    assert cosine.supported
    assert any("uint8 with COSINE" in w for w in cosine.warnings)
    ip = plan({"datatype": "uint8"}, schema=source("ip"))
    assert not ip.supported and "inner-product" in reasons(ip)
    forced = plan({"datatype": "uint8"}, schema=source("ip"), force=True)
    assert forced.supported
    assert any(w.startswith("Forced:") for w in forced.warnings)


def test_integer_back_to_float_needs_the_scale() -> None:
    refused = plan({"datatype": "float32"}, schema=source("l2", "int8"))
    assert not refused.supported
    assert "scale" in reasons(refused)
    previous = Int8Symmetric(source="float32", scale=300.0)
    allowed = plan(
        {"datatype": "float32"},
        schema=source("l2", "int8"),
        previous_encodings={"embedding": previous},
    )
    assert allowed.supported, reasons(allowed)
    assert allowed.vector_changes[0].encoding.__struct_config__.tag == "dequantize"  # type: ignore[union-attr]


def test_svs_vamana_rules() -> None:
    old = plan({"algorithm": "svs-vamana"}, caps=REDIS_8_0)
    assert "SVS-VAMANA needs search module 8.2.0" in reasons(old)
    ok = plan({"algorithm": "svs-vamana", "datatype": "float16"}, caps=REDIS_8_2)
    assert ok.supported, reasons(ok)
    wrong = plan({"algorithm": "svs-vamana"}, schema=source(datatype="float64"), caps=REDIS_8_2)
    assert "SVS-VAMANA takes only float16 or float32" in reasons(wrong)


def test_json_integer_reencoding_is_blocked_with_a_reason() -> None:
    result = plan({"datatype": "int8"}, schema=source(storage="json"))
    assert not result.supported and "JSON vectors" in reasons(result)


def test_int8_without_stored_vectors_cannot_be_calibrated() -> None:
    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "int8"}}]}}
    )
    result = build_plan(
        source_schema=source("l2"),
        source_stats=IndexStats(),
        key_sample=[],
        capabilities=REDIS_8_0,
        patch=patch,
    )
    assert not result.supported


def test_overlap_names_the_other_index_in_either_direction() -> None:
    for other_prefix in ("doc:premium:", "do", ""):
        result = plan(
            {"datatype": "float16"},
            other_indexes=[OtherIndex(name="other", storage_type="hash", prefixes=[other_prefix])],
        )
        assert "index 'other' also covers these keys" in reasons(result)
    unrelated = plan(
        {"datatype": "float16"},
        other_indexes=[OtherIndex(name="other", storage_type="hash", prefixes=["user:"])],
    )
    assert unrelated.supported


REDISVL_PATCH = """
version: 1
changes:
  add_fields:
    - name: category
      type: tag
      path: $.category
      attrs:
        separator: "|"
  remove_fields:
    - legacy_field
  update_fields:
    - name: title
      attrs:
        sortable: true
    - name: embedding
      options:
        datatype: float16
        algorithm: HNSW
        distance_metric: cosine
  rename_fields:
    - old_name: body
      new_name: content
  index:
    name: myindex_v2
    prefix: "doc:v2:"
"""


def test_a_redisvl_patch_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "schema_patch.yaml"
    path.write_text(REDISVL_PATCH)
    patch = SchemaPatch.load(path)
    changes = patch.changes
    assert [f["name"] for f in changes.add_fields] == ["category"]
    assert changes.remove_fields == ["legacy_field"]
    assert changes.update_fields[1].all_attrs == {
        "datatype": "float16",
        "algorithm": "HNSW",
        "distance_metric": "cosine",
    }
    assert (changes.rename_fields[0].old_name, changes.rename_fields[0].new_name) == (
        "body",
        "content",
    )
    assert (changes.index.name, changes.index.prefix) == ("myindex_v2", "doc:v2:")
    again = tmp_path / "again.yaml"
    patch.dump(again)
    assert SchemaPatch.load(again) == patch
