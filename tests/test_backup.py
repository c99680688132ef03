"""The vector backup files (redismigrate.backup): real files in tmp_path, no server.

Every test builds its backup through the public API and then damages or
inspects the files on disk the way a crash, a full disk or a stray edit would.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pickle
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redismigrate.backup import (
    BACKUP_PHASES,
    FRAME_PREFIX,
    FRAME_PREFIX_SIZE,
    HEADER_CHECKSUM,
    BackupBatch,
    BackupCorrupt,
    BackupError,
    BackupField,
    BackupHeader,
    ShardedBackup,
    VectorBackup,
    backup_paths,
    backup_size_on_disk,
    content_checksum,
    encode_frame,
    load_backup,
    new_manifest,
    read_header,
    read_manifest,
    safe_index_name,
    write_manifest,
)
from redismigrate.errors import RedisMigrateError

# schema field name -> hash field name; one differs so the mapping is exercised
FIELDS = {
    "embedding": BackupField(
        source_datatype="float32", target_datatype="float16", dims=4, document_field="embedding"
    ),
    "title_vec": BackupField(
        source_datatype="float64", target_datatype="float32", dims=2, document_field="tv"
    ),
}


def make_header(index: str = "idx", worker: int | None = None, **fields: object) -> BackupHeader:
    return BackupHeader(
        index_name=index,
        plan_hash="plan-1",
        source_schema_hash="src-1",
        target_schema_hash="tgt-1",
        fields=dict(FIELDS),
        batch_size=3,
        worker=worker,
        **fields,  # type: ignore[arg-type]
    )


def vec(*values: float, dtype: str = "float32") -> bytes:
    return np.array(values, dtype=dtype).tobytes()


# Three batches: binary keys (b"\xff", a NUL byte), documents without one field or both.
BATCHES: list[tuple[list[bytes], dict[str, list[bytes | None]]]] = [
    (
        [b"doc:1", b"doc:\xff", b"doc:\x00z"],
        {
            "embedding": [vec(1, 2, 3, 4), vec(5, 6, 7, 8), None],
            "title_vec": [vec(1, 2, dtype="float64"), None, None],
        },
    ),
    (
        [b"\xff", b"doc:4"],
        {
            "embedding": [vec(0, 0, 0, 0), vec(-1, 1e30, 3, 4)],
            "title_vec": [vec(9, 9, dtype="float64"), vec(1, 1, dtype="float64")],
        },
    ),
    (
        [b"doc:5"],
        {"embedding": [None], "title_vec": [vec(2, 3, dtype="float64")]},
    ),
]


def expected_mapping(
    keys: list[bytes], vectors: dict[str, list[bytes | None]]
) -> dict[bytes, dict[str, bytes]]:
    out: dict[bytes, dict[str, bytes]] = {key: {} for key in keys}
    for name, column in vectors.items():
        for key, value in zip(keys, column, strict=True):
            if value is not None:
                out[key][name] = value
    return out


def write_batches(backup_dir: Path, count: int = 3, index: str = "idx") -> VectorBackup:
    backup = VectorBackup.create(backup_dir, make_header(index))
    for keys, vectors in BATCHES[:count]:
        backup.append_batch(keys, vectors)
    return backup


def frame_offsets(backup: VectorBackup) -> list[int]:
    """Start of every committed frame, found from the prefixes."""
    data = backup.data_path.read_bytes()[: backup.header.data_bytes]
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        _, length, _, _ = FRAME_PREFIX.unpack(data[offset : offset + FRAME_PREFIX_SIZE])
        offset += FRAME_PREFIX_SIZE + length
    return offsets


# --------------------------------------------------------------------------- round trip


def test_round_trip_gives_back_exactly_what_was_written(tmp_path: Path) -> None:
    with write_batches(tmp_path) as backup:
        assert backup.batch_count() == 3

    reopened = VectorBackup.open(tmp_path, "idx")
    assert reopened is not None
    got = list(reopened.iter_batches())
    assert [keys for keys, _ in got] == [keys for keys, _ in BATCHES]
    for (_, mapping), (keys, vectors) in zip(got, BATCHES, strict=True):
        assert mapping == expected_mapping(keys, vectors)
    # keyed by schema field name; header.fields says which hash field holds it
    assert got[0][1][b"doc:1"] == {
        "embedding": vec(1, 2, 3, 4),
        "title_vec": vec(1, 2, dtype="float64"),
    }
    assert got[0][1][b"doc:\x00z"] == {}

    frames = list(reopened.iter_frames(start=2))
    assert frames == [BackupBatch(batch=2, keys=BATCHES[2][0], vectors=BATCHES[2][1])]
    assert list(reopened.iter_frames(start=3)) == []
    with pytest.raises(ValueError, match="start"):
        reopened.iter_frames(start=4)
    with pytest.raises(ValueError, match="start"):
        reopened.iter_batches(start=-1)
    assert reopened.verify() == 3


def test_frames_newest_first_come_back_in_reverse_and_are_checked(tmp_path: Path) -> None:
    with write_batches(tmp_path) as backup:
        newest_first = list(backup.iter_frames_newest_first())
        assert [f.batch for f in newest_first] == [2, 1, 0]
        assert newest_first == list(reversed(list(backup.iter_frames())))
        # a flipped byte in the first frame is found before anything is handed out
        offsets = frame_offsets(backup)
        data = bytearray(backup.data_path.read_bytes())
        data[offsets[0] + FRAME_PREFIX_SIZE + 3] ^= 0xFF
        backup.data_path.write_bytes(bytes(data))
        with pytest.raises(BackupCorrupt, match="checksum"):
            next(backup.iter_frames_newest_first())


def test_open_returns_none_without_a_backup_and_create_refuses_an_existing_one(
    tmp_path: Path,
) -> None:
    assert VectorBackup.open(tmp_path, "idx") is None
    write_batches(tmp_path, 1).close()
    with pytest.raises(BackupError, match="already exists"):
        VectorBackup.create(tmp_path, make_header())
    # the refused create left the existing backup alone
    backup = VectorBackup.open(tmp_path, "idx")
    assert backup is not None and backup.batch_count() == 1


def test_create_refuses_a_data_file_without_a_header(tmp_path: Path) -> None:
    paths = backup_paths(tmp_path, "idx")
    paths.data.write_bytes(b"someone's frames")
    with pytest.raises(BackupError, match="exists without a header"):
        VectorBackup.create(tmp_path, make_header())
    assert paths.data.read_bytes() == b"someone's frames"


def test_a_key_scanned_twice_into_one_batch_is_stored_once(tmp_path: Path) -> None:
    backup = VectorBackup.create(tmp_path, make_header())
    keys = [b"a", b"b", b"a"]
    backup.append_batch(keys, {"embedding": [b"1", None, b"1"], "title_vec": [None, b"2", None]})
    assert backup.header.keys_backed_up == 2
    assert list(backup.iter_frames()) == [
        BackupBatch(
            batch=0,
            keys=[b"a", b"b"],
            vectors={"embedding": [b"1", None], "title_vec": [None, b"2"]},
        )
    ]


def test_append_batch_checks_its_arguments_before_writing(tmp_path: Path) -> None:
    backup = VectorBackup.create(tmp_path, make_header())
    with pytest.raises(ValueError, match="missing"):
        backup.append_batch([b"k"], {"embedding": [None]})
    with pytest.raises(ValueError, match="1 values for 2 keys"):
        backup.append_batch([b"a", b"b"], {"embedding": [None], "title_vec": [None, None]})
    with pytest.raises(ValueError, match="twice in one batch with different values"):
        backup.append_batch([b"a", b"a"], {"embedding": [b"1", b"2"], "title_vec": [None, None]})
    with pytest.raises(TypeError, match="bytes"):
        backup.append_batch(["text-key"], {"embedding": [None], "title_vec": [None]})  # type: ignore[list-item]
    assert backup.header.data_bytes == 0 and backup.data_path.stat().st_size == 0


# --------------------------------------------------------------------------- header


def test_header_is_replaced_after_every_batch_and_matches_the_data(tmp_path: Path) -> None:
    backup = VectorBackup.create(tmp_path, make_header())
    paths = backup_paths(tmp_path, "idx")
    inode = paths.header.stat().st_ino
    keys_so_far = 0
    for number, (keys, vectors) in enumerate(BATCHES):
        assert backup.append_batch(keys, vectors) == number
        keys_so_far += len(keys)
        text = paths.header.read_text()
        on_disk = json.loads(text)  # plain JSON anyone can read
        assert text.startswith('{\n  "format": "redismigrate-vector-backup",\n  "version": 2,')
        assert on_disk["dump_completed_batches"] == number + 1
        assert on_disk["keys_backed_up"] == keys_so_far
        assert on_disk["data_bytes"] == paths.data.stat().st_size
        assert on_disk["phase"] == "dump" and on_disk["worker"] is None
        assert on_disk["fields"]["title_vec"]["document_field"] == "tv"
        assert read_header(paths.header) == backup.header
        # a new file each time (os.replace), never rewritten in place
        assert paths.header.stat().st_ino != inode
        inode = paths.header.stat().st_ino
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths.data.name, paths.header.name]


def test_batches_appended_without_commit_count_only_once_committed(tmp_path: Path) -> None:
    """durable=False: frames are written but no header counts them until commit();
    a crash before it (a fresh open) drops exactly those frames and nothing else."""
    backup = VectorBackup.create(tmp_path, make_header())
    paths = backup_paths(tmp_path, "idx")
    backup.append_batch(*BATCHES[0])  # durable: counted at once
    committed = read_header(paths.header)
    assert backup.append_batch(*BATCHES[1], durable=False) == 1
    assert backup.append_batch(*BATCHES[2], durable=False) == 2
    assert backup.uncommitted_batches == 2
    assert read_header(paths.header) == committed  # nothing new counted on disk
    assert paths.data.stat().st_size > committed.data_bytes  # but the frames are written

    # "crash": the writer vanishes without commit; a fresh open sees one batch and
    # cuts the uncounted frames off at its first append
    backup._writer.close()  # type: ignore[union-attr]  # releases the lock, as a dead process would
    reopened = VectorBackup.open(tmp_path, "idx")
    assert reopened is not None and reopened.batch_count() == 1
    assert [keys for keys, _ in reopened.iter_batches()] == [BATCHES[0][0]]
    assert reopened.append_batch(*BATCHES[1], durable=False) == 1
    reopened.commit()
    assert reopened.uncommitted_batches == 0
    assert read_header(paths.header).dump_completed_batches == 2
    assert paths.data.stat().st_size == reopened.header.data_bytes
    # a phase change counts pending frames first; close() commits what is left
    reopened.append_batch(*BATCHES[2], durable=False)
    reopened.update(phase="ready")
    on_disk = read_header(paths.header)
    assert (on_disk.phase, on_disk.dump_completed_batches) == ("ready", 3)
    assert on_disk.keys_backed_up == sum(len(keys) for keys, _ in BATCHES[:3])
    reopened.close()

    (tmp_path / "b").mkdir()
    with VectorBackup.create(tmp_path / "b", make_header()) as other:
        other.append_batch(*BATCHES[0], durable=False)
    assert [keys for keys, _ in VectorBackup.load(tmp_path / "b").iter_batches()] == [BATCHES[0][0]]


def edit_header(path: Path, **changes: object) -> None:
    """Change keys of a header file and seal it again (as a writer would have)."""
    data = json.loads(path.read_text())
    data.update(changes)
    data.pop(HEADER_CHECKSUM, None)
    data[HEADER_CHECKSUM] = content_checksum(data)
    path.write_text(json.dumps(data, indent=2))


def test_a_header_of_another_version_is_refused_clearly(tmp_path: Path) -> None:
    write_batches(tmp_path, 1).close()
    paths = backup_paths(tmp_path, "idx")
    edit_header(paths.header, version=3)
    with pytest.raises(BackupError) as info:
        VectorBackup.open(tmp_path, "idx")
    message = str(info.value)
    assert str(paths.header) in message
    assert "version 3" in message and "version 2 only" in message
    assert "\n" not in message


def test_a_header_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    write_batches(tmp_path, 1).close()
    paths = backup_paths(tmp_path, "idx")
    edit_header(paths.header, resume_from=7)
    with pytest.raises(BackupError, match="unknown field `resume_from`"):
        VectorBackup.load(paths.header)


def test_a_header_that_is_not_json_or_not_a_backup_is_refused(tmp_path: Path) -> None:
    write_batches(tmp_path, 1).close()
    paths = backup_paths(tmp_path, "idx")
    edit_header(paths.header, format="something-else")
    with pytest.raises(BackupError, match="format 'something-else'"):
        VectorBackup.open(tmp_path, "idx")
    paths.header.write_text('{"format": "redismigrate-vector-backup", ')
    with pytest.raises(BackupCorrupt, match="not valid JSON"):
        VectorBackup.open(tmp_path, "idx")


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("torn", ["half a frame", "a whole uncommitted frame"])
def test_a_torn_tail_is_ignored_then_cut_off_by_the_next_append(tmp_path: Path, torn: str) -> None:
    write_batches(tmp_path, 2).close()
    paths = backup_paths(tmp_path, "idx")
    committed = paths.data.stat().st_size
    # what a crash leaves: frame bytes written, header not yet replaced
    # (larger than the batch appended below, so overwriting alone would leave some behind)
    frame = encode_frame(
        BackupBatch(
            batch=2, keys=[b"lost"], vectors={"embedding": [b"x" * 4000], "title_vec": [None]}
        )
    )
    tail = frame[: len(frame) // 2] if torn == "half a frame" else frame
    with paths.data.open("ab") as handle:
        handle.write(tail)

    backup = VectorBackup.open(tmp_path, "idx")
    assert backup is not None
    assert [keys for keys, _ in backup.iter_batches()] == [BATCHES[0][0], BATCHES[1][0]]
    assert VectorBackup.load(tmp_path).verify() == 2

    assert paths.data.stat().st_size == committed + len(tail)  # opening changed nothing
    backup.open_for_append()
    assert paths.data.stat().st_size == committed
    assert backup.append_batch(*BATCHES[2]) == 2
    expected_size = committed + len(encode_frame(BackupBatch(batch=2, **_kw(BATCHES[2]))))
    assert paths.data.stat().st_size == expected_size == backup.header.data_bytes
    assert [keys for keys, _ in backup.iter_batches()] == [keys for keys, _ in BATCHES]


def _kw(batch: tuple[list[bytes], dict[str, list[bytes | None]]]) -> dict[str, object]:
    return {"keys": batch[0], "vectors": batch[1]}


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("payload", "checksum mismatch"), ("magic", "bad magic"), ("batch", "expected 1")],
)
def test_a_damaged_committed_frame_is_reported_with_file_and_offset(
    tmp_path: Path, damage: str, reason: str
) -> None:
    backup = write_batches(tmp_path)
    backup.close()
    offset = frame_offsets(backup)[1]
    assert offset > 0
    data = bytearray(backup.data_path.read_bytes())
    if damage == "payload":
        data[offset + FRAME_PREFIX_SIZE + 5] ^= 0x01
    elif damage == "magic":
        data[offset] = ord("X")
    else:  # the batch number in the prefix
        data[offset + 15] ^= 0x07
    backup.data_path.write_bytes(bytes(data))

    reader = VectorBackup.load(tmp_path)
    batches = reader.iter_batches()
    assert next(batches)[0] == BATCHES[0][0]  # frame 0 is intact and still readable
    with pytest.raises(BackupCorrupt) as info:
        next(batches)
    message = str(info.value)
    assert f"backup data file {backup.data_path} is corrupt at byte {offset} " in message
    assert reason in message
    assert "\n" not in message
    # skipping frame 1 by its prefix does not hide bad data from the frames that are read
    if damage == "payload":
        assert [f.batch for f in reader.iter_frames(start=2)] == [2]


def test_a_frame_running_past_the_committed_end_is_a_short_frame(tmp_path: Path) -> None:
    backup = write_batches(tmp_path)
    backup.close()
    offset = frame_offsets(backup)[2]
    data = bytearray(backup.data_path.read_bytes())
    # the length claims 500 bytes of the uncommitted tail that follows the committed end
    length = len(data) - offset - FRAME_PREFIX_SIZE + 500
    data[offset + 4 : offset + 8] = length.to_bytes(4, "big")
    backup.data_path.write_bytes(bytes(data) + b"\0" * 1000)
    with pytest.raises(BackupCorrupt, match=f"corrupt at byte {offset} \\(short frame"):
        list(VectorBackup.load(tmp_path).iter_frames())


def test_data_bytes_beyond_the_file_is_corrupt(tmp_path: Path) -> None:
    write_batches(tmp_path, 2).close()
    paths = backup_paths(tmp_path, "idx")
    size = paths.data.stat().st_size
    with paths.data.open("r+b") as handle:
        handle.truncate(size - 10)  # something else cut the file
    with pytest.raises(BackupCorrupt, match=f"is {size - 10} bytes but its header counts {size}"):
        VectorBackup.open(tmp_path, "idx")
    with pytest.raises(BackupCorrupt, match="truncated"):
        VectorBackup.load(paths.header)
    paths.data.unlink()
    with pytest.raises(BackupCorrupt, match="is missing"):
        VectorBackup.open(tmp_path, "idx")


def test_a_pickle_in_the_data_file_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Exploit())
    pickle.loads(payload).close()  # the payload is live: unpickling creates the marker
    assert marker.exists()
    marker.unlink()

    backup = VectorBackup.create(tmp_path, make_header())
    backup.close()
    frame = FRAME_PREFIX.pack(b"RMVB", len(payload), _crc(payload), 0) + payload
    backup.data_path.write_bytes(frame)
    edit_header(
        backup.header_path, dump_completed_batches=1, keys_backed_up=1, data_bytes=len(frame)
    )

    with pytest.raises(BackupCorrupt, match="corrupt at byte 0 \\(payload does not decode"):
        list(VectorBackup.load(tmp_path).iter_batches())
    assert not marker.exists()


def _crc(payload: bytes) -> int:
    import zlib

    return zlib.crc32(payload) & 0xFFFFFFFF


# --------------------------------------------------------------------------- phases


def test_phases_only_move_forward(tmp_path: Path) -> None:
    backup = write_batches(tmp_path, 2)
    assert backup.update(phase="ready").phase == "ready"
    with pytest.raises(BackupError, match="appended only in phase 'dump'"):
        backup.append_batch(*BATCHES[2])
    with pytest.raises(BackupError, match="cannot move back from 'ready' to 'dump'"):
        backup.update(phase="dump")
    backup.update(phase="index_dropped", quantize_completed_batches=1, keys_reencoded=3)
    with pytest.raises(BackupError, match="cannot go down"):
        backup.update(quantize_completed_batches=0)
    with pytest.raises(BackupError, match="beyond dump_completed_batches"):
        backup.update(quantize_completed_batches=3)  # only 2 batches were backed up
    with pytest.raises(ValueError, match="cannot be changed"):
        backup.update(data_bytes=0)
    with pytest.raises(ValueError, match="phase must be one of"):
        backup.update(phase="done")
    backup.update(phase="active", quantize_completed_batches=2, keys_reencoded=5)
    backup.close()

    reopened = VectorBackup.open(tmp_path, "idx")
    assert reopened is not None
    header = reopened.header
    assert (header.phase, header.quantize_completed_batches, header.keys_reencoded) == (
        "active",
        2,
        5,
    )
    # reset_to is the one way back (a rollback restored the originals)
    with pytest.raises(BackupError, match="comes after"):
        reopened.reset_to("validated")
    reopened.reset_to("ready", quantize_completed_batches=0, keys_reencoded=0)
    assert read_header(reopened.header_path).phase == "ready"
    for phase in BACKUP_PHASES[1:]:
        reopened.update(phase=phase)
    assert read_header(reopened.header_path).phase == "validated"


def test_a_loaded_backup_is_read_only(tmp_path: Path) -> None:
    write_batches(tmp_path, 1).close()
    reader = VectorBackup.load(tmp_path)
    with pytest.raises(BackupError, match="read-only"):
        reader.append_batch(*BATCHES[1])
    with pytest.raises(BackupError, match="read-only"):
        reader.update(phase="ready")


def test_two_writers_cannot_both_append(tmp_path: Path) -> None:
    write_batches(tmp_path, 1).close()
    first = VectorBackup.open(tmp_path, "idx")
    second = VectorBackup.open(tmp_path, "idx")
    assert first is not None and second is not None
    first.append_batch(*BATCHES[1])
    with pytest.raises(BackupError, match="locked by another writer"):
        second.append_batch(*BATCHES[2])
    first.close()
    # `second` read the header before `first` appended: it must not cut batch 1 off
    with pytest.raises(BackupError, match="changed on disk"):
        second.append_batch(*BATCHES[2])
    assert VectorBackup.load(tmp_path).verify() == 2


# --------------------------------------------------------------------------- paths


def test_load_accepts_the_header_the_prefix_and_the_directory(tmp_path: Path) -> None:
    write_batches(tmp_path).close()
    paths = backup_paths(tmp_path, "idx")
    prefix = tmp_path / "migration_backup_idx"
    assert paths.prefix == prefix
    for where in (paths.header, prefix, str(prefix), tmp_path):
        backup = VectorBackup.load(where)
        assert backup.header_path == paths.header
        assert backup.read_only and backup.batch_count() == 3
    assert isinstance(load_backup(prefix), VectorBackup)

    write_batches(tmp_path, 1, index="other").close()
    with pytest.raises(BackupError, match="holds 2 backups"):
        VectorBackup.load(tmp_path)
    with pytest.raises(BackupError, match="no backup at"):
        VectorBackup.load(tmp_path / "migration_backup_nope")


def test_open_refuses_files_of_another_index(tmp_path: Path) -> None:
    write_batches(tmp_path, 1, index="other").close()
    other, idx = backup_paths(tmp_path, "other"), backup_paths(tmp_path, "idx")
    other.header.rename(idx.header)
    other.data.rename(idx.data)
    with pytest.raises(BackupError, match="belongs to index 'other'"):
        VectorBackup.open(tmp_path, "idx")
    # load() reads whatever the file holds
    assert VectorBackup.load(idx.header).header.index_name == "other"

    VectorBackup.create(tmp_path, make_header("idx", worker=3)).close()
    shard = backup_paths(tmp_path, "idx", 3)
    shard.header.replace(idx.header)
    shard.data.replace(idx.data)
    with pytest.raises(BackupError, match="belongs to index 'idx' \\(worker 3\\)"):
        VectorBackup.open(tmp_path, "idx")


def test_index_names_become_safe_distinct_file_names(tmp_path: Path) -> None:
    assert safe_index_name("products_v2.en-1") == "products_v2.en-1"
    odd = safe_index_name("my index/ü")
    assert odd.startswith("my_index__-") and len(odd) == len("my_index__-") + 8
    assert safe_index_name("my index/ü") != safe_index_name("my_index/ü")
    # an index named like a worker shard keeps its own files
    assert backup_paths(tmp_path, "a.w1").header != backup_paths(tmp_path, "a", 1).header
    assert len(safe_index_name("x" * 500)) < 120

    backup = VectorBackup.create(tmp_path, make_header("../escape me"))
    assert backup.header_path.parent == tmp_path
    backup.close()
    reopened = VectorBackup.open(tmp_path, "../escape me")
    assert reopened is not None and reopened.header.index_name == "../escape me"


def test_backup_size_on_disk_counts_every_file_of_the_index(tmp_path: Path) -> None:
    assert backup_size_on_disk(tmp_path, "idx") == 0
    write_batches(tmp_path).close()
    write_batches(tmp_path, 1, index="other").close()
    paths = backup_paths(tmp_path, "idx")
    assert backup_size_on_disk(tmp_path, "idx") == (
        paths.header.stat().st_size + paths.data.stat().st_size
    )


# --------------------------------------------------------------------------- workers


def test_multi_worker_backup_iterates_every_shard_in_worker_order(tmp_path: Path) -> None:
    manifest = new_manifest("idx", "plan-1", 3)
    assert write_manifest(tmp_path, manifest) == backup_paths(tmp_path, "idx").manifest
    # the workers write concurrently; shards are numbered independently from 0
    written: dict[int, list[list[bytes]]] = {}
    for worker in (2, 0, 1):
        with VectorBackup.create(tmp_path, make_header(worker=worker)) as shard:
            written[worker] = []
            for i in range(worker + 1):
                keys = [f"w{worker}:b{i}:k{j}".encode() for j in range(2)]
                shard.append_batch(
                    keys, {"embedding": [vec(worker, i, 0, 1)] * 2, "title_vec": [None, None]}
                )
                written[worker].append(keys)

    assert read_manifest(backup_paths(tmp_path, "idx").manifest) == manifest
    sharded = ShardedBackup.open(tmp_path, "idx")
    assert sharded is not None
    assert sharded.batch_count() == 6 and sharded.keys_backed_up() == 12
    expected_keys = [keys for worker in range(3) for keys in written[worker]]
    assert [keys for keys, _ in sharded.iter_batches()] == expected_keys
    assert [(w, f.batch) for w, f in sharded.iter_frames()] == [
        (0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)
    ]  # fmt: skip
    first_keys, first_map = next(sharded.iter_batches())
    assert first_map[first_keys[0]] == {"embedding": vec(0, 0, 0, 1)}

    for where in (tmp_path, backup_paths(tmp_path, "idx").prefix):
        assert isinstance(load_backup(where), ShardedBackup)
    with pytest.raises(BackupError, match="ShardedBackup"):
        VectorBackup.load(tmp_path)
    # a shard opened for resuming is the worker's own pair of files
    shard1 = VectorBackup.open(tmp_path, "idx", worker=1)
    assert shard1 is not None and shard1.batch_count() == 2
    assert shard1.data_path.name == "migration_backup_idx.w1.data"


def test_a_missing_shard_file_is_named(tmp_path: Path) -> None:
    write_manifest(tmp_path, new_manifest("idx", "plan-1", 3))
    for worker in range(3):
        with VectorBackup.create(tmp_path, make_header(worker=worker)) as shard:
            shard.append_batch(*BATCHES[worker])
    data1 = backup_paths(tmp_path, "idx", 1).data
    data1.rename(tmp_path / "elsewhere")
    with pytest.raises(BackupError, match=f"{data1} is missing"):
        ShardedBackup.load(tmp_path)
    (tmp_path / "elsewhere").rename(data1)

    header2 = backup_paths(tmp_path, "idx", 2).header
    header2.unlink()
    with pytest.raises(BackupError) as info:
        ShardedBackup.open(tmp_path, "idx")
    assert "shard 2" in str(info.value) and str(header2) in str(info.value)


def test_a_manifest_is_not_silently_replaced(tmp_path: Path) -> None:
    write_manifest(tmp_path, new_manifest("idx", "plan-1", 2))
    write_manifest(tmp_path, new_manifest("idx", "plan-1", 2))  # the same one: a resume
    with pytest.raises(BackupError, match="different backup manifest"):
        write_manifest(tmp_path, new_manifest("idx", "plan-1", 3))
    path = backup_paths(tmp_path, "idx").manifest
    data = json.loads(path.read_text())
    data["shards"][0]["header"] = "../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(BackupError, match="not a plain file name"):
        read_manifest(path)


# --------------------------------------------------------------------------- memory


def test_iterating_a_large_backup_holds_one_frame_at_a_time(tmp_path: Path) -> None:
    dims, per_batch, batches = 768, 100, 200
    header = BackupHeader(
        index_name="big",
        plan_hash="p",
        source_schema_hash="s",
        target_schema_hash="t",
        fields={
            "v": BackupField(
                source_datatype="float32", target_datatype="int8", dims=dims, document_field="v"
            )
        },
        batch_size=per_batch,
    )
    rng = np.random.default_rng(7)
    with VectorBackup.create(tmp_path, header) as backup:
        for b in range(batches):
            block = rng.standard_normal((per_batch, dims), dtype=np.float32)
            keys = [f"doc:{b}:{i}".encode() for i in range(per_batch)]
            backup.append_batch(keys, {"v": [row.tobytes() for row in block]})
    total = backup.header.data_bytes
    assert total > 60_000_000  # 200 x 100 x 768 float32

    reader = VectorBackup.load(tmp_path)
    tracemalloc.start()
    try:
        seen = 0
        for keys, mapping in reader.iter_batches():
            seen += len(keys)
            assert len(mapping[keys[-1]]["v"]) == dims * 4
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == per_batch * batches
    # one frame is ~310 kB; holding them all would be ~62 MB
    assert peak < 4_000_000, f"peak {peak} bytes while iterating {total} bytes"


# --------------------------------------------------------------------------- properties

optional_bytes = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def batches_strategy(draw: st.DrawFn) -> list[tuple[list[bytes], dict[str, list[bytes | None]]]]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        keys = draw(st.lists(st.binary(max_size=12), unique=True, max_size=6))
        vectors = {
            name: draw(st.lists(optional_bytes, min_size=len(keys), max_size=len(keys)))
            for name in FIELDS
        }
        out.append((keys, vectors))
    return out


@settings(max_examples=40, deadline=None)
@given(batches=batches_strategy())
def test_random_batches_round_trip(
    batches: list[tuple[list[bytes], dict[str, list[bytes | None]]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with VectorBackup.create(tmp, make_header("idx:" + os.urandom(2).hex())) as backup:
            for number, (keys, vectors) in enumerate(batches):
                assert backup.append_batch(keys, vectors) == number
        reader = VectorBackup.load(tmp)
        frames = list(reader.iter_frames())
        assert frames == [
            BackupBatch(batch=n, keys=keys, vectors=vectors)
            for n, (keys, vectors) in enumerate(batches)
        ]
        assert reader.header.keys_backed_up == sum(len(keys) for keys, _ in batches)
        assert [m for _, m in reader.iter_batches()] == [expected_mapping(*b) for b in batches]


def test_errors_belong_to_the_redismigrate_family() -> None:
    assert issubclass(BackupCorrupt, BackupError)
    assert issubclass(BackupError, RedisMigrateError)
    assert BackupError.exit_code == BackupCorrupt.exit_code == 1


def test_the_writeback_hint_is_bound_to_the_real_system_call(tmp_path: Path) -> None:
    """sync_file_range is called through ctypes: a wrong binding would pass garbage to
    the kernel. A good file descriptor is accepted, a closed one refused with EBADF."""
    from redismigrate import backup as backup_module

    if backup_module._start_writeback is None:
        assert not sys.platform.startswith("linux")
        return
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 100_000)
    assert backup_module._start_writeback(fd, 4096, 50_000) == 0
    os.close(fd)
    assert backup_module._start_writeback(fd, 0, 10) == -1
    assert ctypes.get_errno() == errno.EBADF


def test_views_are_written_as_the_bytes_they_show(tmp_path: Path) -> None:
    """append_batch takes contiguous memoryviews as they are (the fast read path hands
    them out) and copies a non-contiguous one; either way the frame holds the bytes."""
    blobs = [bytes([i]) * 64 for i in range(4)]
    joined = bytearray(b"".join(blobs))
    views = [memoryview(joined)[i * 64 : (i + 1) * 64].toreadonly() for i in range(4)]
    strided = memoryview(bytes(range(128)))[::2]
    assert not strided.c_contiguous
    with VectorBackup.create(tmp_path, make_header()) as backup:
        backup.append_batch(
            [b"a", b"b", b"c", b"d"], {"embedding": [*views[:3], None], "title_vec": [None] * 4}
        )
        backup.append_batch([b"e"], {"embedding": [strided], "title_vec": [views[3]]})
    frames = list(VectorBackup.load(tmp_path).iter_frames())
    assert frames[0].vectors["embedding"] == [*blobs[:3], None]
    assert frames[1].vectors == {"embedding": [bytes(range(0, 128, 2))], "title_vec": [blobs[3]]}
