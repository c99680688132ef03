"""Files in the backup directory: created 0600 whatever the umask; one restarted copy at most."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from redismigrate.backup import (
    RESTARTED_SUFFIX,
    STALE_SUFFIX,
    VectorBackup,
    backup_paths,
    new_manifest,
    set_aside,
    write_manifest,
)
from redismigrate.files import open_private, write_document
from tests.test_backup import BATCHES, make_header


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_backup_file_is_created_0600(tmp_path: Path, umask: int) -> None:
    write_manifest(tmp_path, new_manifest("idx", "plan-1", 2))
    for worker in (None, 0, 1):
        with VectorBackup.create(tmp_path, make_header(worker=worker)) as backup:
            keys, vectors = BATCHES[0]
            backup.append_batch(keys, vectors)
    write_document(tmp_path / "report.yaml", {"a": 1})
    files = sorted(tmp_path.iterdir())
    assert len(files) == 8  # manifest, 3 headers, 3 data files, the report
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_a_data_file_left_0644_by_an_older_version_becomes_0600_when_written(
    tmp_path: Path,
) -> None:
    backup = VectorBackup.create(tmp_path, make_header())
    backup.close()
    backup.data_path.chmod(0o644)
    resumed = VectorBackup.open(tmp_path, "idx")
    assert resumed is not None
    keys, vectors = BATCHES[0]
    resumed.append_batch(keys, vectors)
    resumed.close()
    assert mode(backup.data_path) == 0o600


def test_open_private_creates_truncates_and_reopens(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "f.bin"
    with open_private(path, "wb") as handle:
        handle.write(b"abc")
    with open_private(path, "r+b") as handle:
        assert handle.read() == b"abc"
    with open_private(path, "w+b") as handle:
        assert handle.read() == b""
    assert mode(path) == 0o600


def _backup_files(directory: Path, index: str = "idx", workers: int = 0) -> list[Path]:
    paths = backup_paths(directory, index)
    files = [paths.header, paths.data]
    if workers:
        write_manifest(directory, new_manifest(index, "plan-1", workers))
        files.append(paths.manifest)
    for worker in range(workers):
        shard = backup_paths(directory, index, worker)
        files += [shard.header, shard.data]
    for path in files:
        if not path.exists():
            path.write_bytes(b"x" * 10)
    return files


def test_a_restarted_backup_keeps_one_copy_with_a_unique_name(tmp_path: Path) -> None:
    # another index whose name starts the same: its copies are not touched
    other = _backup_files(tmp_path, "idx_other")
    set_aside(tmp_path, "idx_other", other, RESTARTED_SUFFIX)
    names: set[str] = set()
    for attempt in range(4):  # four retries within the same second
        files = _backup_files(tmp_path, workers=2 if attempt == 0 else 0)
        moved = set_aside(tmp_path, "idx", files, RESTARTED_SUFFIX)
        assert [p.name.split(RESTARTED_SUFFIX)[0] for p in moved] == [f.name for f in files]
        assert not any(f.exists() for f in files)
        tags = {p.name.split(RESTARTED_SUFFIX)[1] for p in moved}
        assert len(tags) == 1  # one tag for the whole set
        assert re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{6}", tags.pop())
        names |= {p.name for p in moved}
        copies = sorted(p.name for p in tmp_path.glob(f"migration_backup_idx.*{RESTARTED_SUFFIX}*"))
        assert copies == sorted(p.name for p in moved)  # only the newest set is kept
    assert len(names) == 7 + 3 * 2  # every copy had a name of its own
    assert len(list(tmp_path.glob(f"migration_backup_idx_other.*{RESTARTED_SUFFIX}*"))) == 2


def test_stale_copies_are_all_kept_under_unique_names(tmp_path: Path) -> None:
    for _ in range(3):
        set_aside(tmp_path, "idx", _backup_files(tmp_path), STALE_SUFFIX)
    assert len(list(tmp_path.glob(f"*{STALE_SUFFIX}*"))) == 6
