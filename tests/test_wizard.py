"""The wizard driven by piped input, as a script would drive it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from tests.test_planner import base_schema, load_docs


def run_wizard(
    redis_url: str, index: str, answers: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "redismigrate",
            "wizard",
            "--index",
            index,
            "--url",
            redis_url,
            "--plan-out",
            str(tmp_path / "plan.yaml"),
            "--patch-out",
            str(tmp_path / "patch.yaml"),
        ],
        input="".join(f"{a}\n" for a in answers),
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


@pytest.fixture
def wizard_index(sync_client: redis.Redis, ns: str) -> str:
    schema = base_schema(f"{ns}_wiz", f"{ns}:w:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load_docs(sync_client, f"{ns}:w:", "hash")
    return schema.name


HAND_WRITTEN = """
version: 1
changes:
  add_fields:
    - name: brand
      type: tag
      attrs:
        sortable: true
        separator: "|"
  remove_fields: [loc]
  update_fields:
    - name: title
      attrs: {sortable: true, weight: 2.0}
    - name: embedding
      attrs: {algorithm: flat, datatype: float16, distance_metric: l2}
  rename_fields:
    - {old_name: category, new_name: kind}
  index:
    name: {index}_v2
"""


def test_piped_answers_write_the_same_patch_as_a_hand_written_one(
    redis_url: str, wizard_index: str, tmp_path: Path
) -> None:
    answers = [
        "9",  # refused: not on the menu
        "1", "title",  # refused: the field exists
        "brand", "vector",  # refused: cannot add a vector field
        "tag", "y", "ab",  # refused: separator must be one character
        "|", "n",
        "2", "title", "y", "0",  # refused: weight must be > 0
        "2", "",
        "2", "embedding", "svs", "flat", "int8",  # int8 refused on this server
        "float16", "l2",
        "3", "loc",
        "4", "category", "title",  # refused: name taken
        "kind",
        "5", f"{wizard_index}_v2",
        "7",
        "8",
    ]  # fmt: skip
    result = run_wizard(redis_url, wizard_index, answers, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for refusal in (
        "enter a number from 1 to 8",
        "a field named 'title' already exists",
        "a vector field needs a vector in every document",
        "a separator is one character",
        "it must be greater than 0",
        "datatype must be one of",
        "a field named 'title' already exists",
    ):
        assert f"Refused: {refusal}" in out, refusal
    written = SchemaPatch.load(tmp_path / "patch.yaml")
    by_hand = SchemaPatch.from_yaml(HAND_WRITTEN.replace("{index}", wizard_index))
    assert written.changes == by_hand.changes
    assert written.source_index == wizard_index
    plan = MigrationPlan.load(tmp_path / "plan.yaml")
    assert plan.supported
    assert plan.merged_target_schema.field_names == ["title", "kind", "price", "embedding", "brand"]
    assert "Supported: True" in out


def test_input_ending_early_writes_nothing(
    redis_url: str, wizard_index: str, tmp_path: Path
) -> None:
    result = run_wizard(redis_url, wizard_index, ["1", "brand"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: input ended before 'Finish'; nothing was written"
    ]
    assert not (tmp_path / "plan.yaml").exists() and not (tmp_path / "patch.yaml").exists()


def test_unknown_index_is_refused_before_any_question(redis_url: str, tmp_path: Path) -> None:
    result = run_wizard(redis_url, "no_such_wizard_idx", [], tmp_path)
    assert result.returncode == 2
    assert "no_such_wizard_idx" in result.stderr and "Choose an action" not in result.stdout
