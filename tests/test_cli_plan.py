"""`redismigrate plan` as a user runs it: exit codes 0 / 3 / 2 and what is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from tests.test_cli import assert_one_line_error, cli
from tests.test_planner import base_schema, load_docs


@pytest.fixture
def hash_index(sync_client: redis.Redis, ns: str) -> str:
    schema = base_schema(f"{ns}_cli", f"{ns}:cli:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load_docs(sync_client, f"{ns}:cli:", "hash")
    return schema.name


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_supported_plan_exits_0_and_loads_back(
    redis_url: str, hash_index: str, tmp_path: Path
) -> None:
    patch = write(
        tmp_path / "patch.yaml",
        "version: 1\nchanges:\n  update_fields:\n    - name: embedding\n"
        "      attrs: {datatype: float16}\n  add_fields:\n    - {name: brand, type: tag}\n",
    )
    out = tmp_path / "plan.yaml"
    result = cli(
        "plan", "--index", hash_index, "--schema-patch", str(patch), "--url", redis_url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Supported: True" in result.stdout
    # the planner's default for re-encoding hash vectors where the memory fits
    assert "Mode: online (finish: hash vectors re-encoded into shadow fields)" in result.stdout
    assert "Mode online (chosen by the planner)" in result.stdout
    assert "float32 -> float16" in result.stdout
    plan = MigrationPlan.load(out)
    assert plan.supported and plan.vector_changes[0].target_datatype == "float16"


def test_a_blocked_plan_is_written_and_exits_3(
    redis_url: str, hash_index: str, tmp_path: Path
) -> None:
    patch = write(
        tmp_path / "patch.yaml",
        "version: 1\nchanges:\n  update_fields:\n    - {name: embedding, attrs: {dims: 4}}\n",
    )
    out = tmp_path / "plan.yaml"
    result = cli(
        "plan", "--index", hash_index, "--schema-patch", str(patch), "--url", redis_url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Supported: False" in result.stdout and "dimensions" in result.stdout
    assert not MigrationPlan.load(out).supported


@pytest.mark.parametrize(
    ("patch_text", "needle"),
    [
        ("version: 1\nchanges:\n  add_feilds: []\n", "add_feilds"),
        ("version: 1\nchanges: [\n", "not valid YAML"),
        ("version: 1\nsource_index: other_index\nchanges: {}\n", "for index 'other_index'"),
        (
            "version: 1\nchanges:\n  update_fields:\n    - {name: title, attrs: {wieght: 2}}\n",
            "wieght",
        ),
    ],
)
def test_bad_patches_are_one_line_exit_2_and_nothing_is_written(
    redis_url: str, hash_index: str, tmp_path: Path, patch_text: str, needle: str
) -> None:
    patch = write(tmp_path / "patch.yaml", patch_text)
    out = tmp_path / "plan.yaml"
    result = cli(
        "plan", "--index", hash_index, "--schema-patch", str(patch), "--url", redis_url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert_one_line_error(result, 2, needle)
    assert not out.exists()


def test_missing_file_unknown_index_and_both_inputs_are_exit_2(
    redis_url: str, hash_index: str, tmp_path: Path
) -> None:
    out = tmp_path / "plan.yaml"
    base = ["plan", "--url", redis_url, "--plan-out", str(out)]
    missing = cli(*base, "--index", hash_index, "--schema-patch", str(tmp_path / "nope.yaml"))
    assert_one_line_error(missing, 2, "does not exist")
    patch = write(tmp_path / "p.yaml", "version: 1\nchanges: {remove_fields: [title]}\n")
    unknown = cli(*base, "--index", "no_such_idx_q", "--schema-patch", str(patch))
    assert_one_line_error(unknown, 2, "no_such_idx_q")
    both = cli(
        *base, "--index", hash_index, "--schema-patch", str(patch), "--target-schema", str(patch)
    )
    assert_one_line_error(both, 2, "exactly one")
    no_dir = cli(
        "plan", "--url", redis_url, "--index", hash_index, "--schema-patch", str(patch),
        "--plan-out", str(tmp_path / "no" / "such" / "plan.yaml"),
    )  # fmt: skip
    assert_one_line_error(no_dir, 2, "does not exist")
    assert not out.exists()
