"""The on-disk backup of original vector bytes, written before anything is re-encoded.

Pure file I/O, no Redis. The layout is described in ``docs/backup-format.md``:
for an index ``I`` a backup directory holds ``migration_backup_<I>.header.json``
(progress and identity, replaced atomically) and ``migration_backup_<I>.data``
(append-only, checksummed frames of msgpack). A multi-worker run writes one such
pair per worker plus ``migration_backup_<I>.manifest.json``.

The commit rule: a frame is appended and fsynced *before* the header that counts
it is written, so the header never points past durable data. Frames may be
appended without a commit (``durable=False``) and committed together later by
``commit()`` (one fsync and one header for many frames); until then they are an
uncommitted tail. Bytes beyond
``header.data_bytes`` are an uncommitted tail: readers ignore them and the next
append cuts them off. A backup is data: loading it never runs code (no pickle).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeAlias

import msgspec

from redismigrate.errors import RedisMigrateError
from redismigrate.files import open_private, write_document
from redismigrate.schema import VECTOR_DATATYPES, Model

if sys.platform != "win32":
    import fcntl

BACKUP_FORMAT = "redismigrate-vector-backup"
MANIFEST_FORMAT = "redismigrate-vector-backup-manifest"
BACKUP_VERSION = 2
# a manifest naming the cluster primary of each shard; one without them stays version 2
MANIFEST_CLUSTER_VERSION = 3
MANIFEST_VERSIONS = (BACKUP_VERSION, MANIFEST_CLUSTER_VERSION)
# the key, in a header / manifest file, of the sha256 over the rest of its content
HEADER_CHECKSUM = "header_checksum"
MANIFEST_CHECKSUM = "manifest_checksum"
BACKUP_PHASES = (
    "dump",
    "ready",
    "index_dropped",
    "active",
    "completed",
    "target_created",
    "validated",
)
Phase: TypeAlias = Literal[
    "dump", "ready", "index_dropped", "active", "completed", "target_created", "validated"
]

FRAME_MAGIC = b"RMVB"
# magic, payload length, CRC32 of the payload, batch number; all big-endian
FRAME_PREFIX = struct.Struct(">4sIII")
FRAME_PREFIX_SIZE = FRAME_PREFIX.size  # 16
MAX_PAYLOAD_BYTES = 0xFFFFFFFF

FILE_PREFIX = "migration_backup_"
HEADER_SUFFIX = ".header.json"
DATA_SUFFIX = ".data"
MANIFEST_SUFFIX = ".manifest.json"

# what update() and reset_to() may change; the rest is append_batch's or identifies the backup
_UPDATABLE = frozenset({"phase", "quantize_completed_batches", "keys_reencoded"})
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_SHARD_LIKE = re.compile(r"\.w\d+$")
_SHARD_FILE = re.compile(r"\.w\d+(\.header\.json|\.data)$")
_MAX_SAFE_NAME = 100


class BackupError(RedisMigrateError):
    """A vector backup cannot be created, opened, written or read as asked."""

    exit_code = 1


class BackupCorrupt(BackupError):
    """A backup file does not hold what its header says: damaged or truncated."""


# --------------------------------------------------------------------------- file formats


class BackupField(Model, frozen=True, kw_only=True):
    """One vector field in the backup: how it is stored now, and what it becomes."""

    source_datatype: str
    target_datatype: str
    dims: int
    document_field: str  # the hash field that holds the vector bytes


class BackupHeader(Model, frozen=True, kw_only=True, omit_defaults=False):
    """Identity and progress of one backup (or one worker's shard of it).

    Every key is written, defaults included, so the file reads on its own.
    """

    format: Literal["redismigrate-vector-backup"] = "redismigrate-vector-backup"
    version: int = BACKUP_VERSION
    index_name: str
    plan_hash: str
    source_schema_hash: str
    target_schema_hash: str
    fields: dict[str, BackupField]
    batch_size: int
    phase: Phase = "dump"
    dump_completed_batches: int = 0
    quantize_completed_batches: int = 0
    keys_backed_up: int = 0
    keys_reencoded: int = 0
    data_bytes: int = 0
    worker: int | None = None
    created_at: str = ""
    updated_at: str = ""


class BackupBatch(Model, frozen=True, kw_only=True):
    """The payload of one data frame.

    ``vectors[field][i]`` is the original bytes of ``keys[i]``'s field, or None
    when that document had no such field.
    """

    batch: int
    keys: list[bytes]
    vectors: dict[str, list[bytes | None]]


class ShardInfo(Model, frozen=True, kw_only=True, omit_defaults=False):
    worker: int
    header: str  # file name, relative to the manifest's directory
    data: str


class ShardNode(Model, frozen=True, kw_only=True, omit_defaults=False):
    """The Redis Cluster primary whose keys a shard holds, as it was when the backup began."""

    worker: int
    node_id: str
    address: str  # host:port
    slots: list[tuple[int, int]]  # ranges, both ends included


class Manifest(Model, frozen=True, kw_only=True, omit_defaults=False):
    """The list of per-worker shards of a multi-worker backup; on a Redis Cluster, one
    shard per primary, each named in ``nodes`` (format version 3)."""

    format: Literal["redismigrate-vector-backup-manifest"] = "redismigrate-vector-backup-manifest"
    version: int = BACKUP_VERSION
    index_name: str
    plan_hash: str
    workers: int
    shards: list[ShardInfo]
    nodes: list[ShardNode] | None = None  # not written when None (version 2)


_BATCH_ENCODER = msgspec.msgpack.Encoder()
_BATCH_DECODER = msgspec.msgpack.Decoder(BackupBatch)


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class BackupPaths:
    """Where the files of one backup (or one worker's shard) live."""

    prefix: Path  # .../migration_backup_<I>, or .../migration_backup_<I>.w<N>
    header: Path
    data: Path
    manifest: Path  # the index's manifest (shared by all workers)


def safe_index_name(index_name: str) -> str:
    """``index_name`` as a file-name fragment.

    Characters outside ``[A-Za-z0-9_.-]`` become ``_``; when anything had to
    change (or the name would read as a worker shard, ``x.w3``, or is very long)
    eight hex digits of the real name's SHA-256 are appended so that different
    names keep different files.
    """
    safe = _UNSAFE_CHARS.sub("_", index_name)
    if (
        safe != index_name
        or not index_name
        or _SHARD_LIKE.search(index_name)
        or len(safe) > _MAX_SAFE_NAME
    ):
        digest = hashlib.sha256(index_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:_MAX_SAFE_NAME]}-{digest}"
    return safe


def backup_paths(
    backup_dir: str | os.PathLike[str], index_name: str, worker: int | None = None
) -> BackupPaths:
    """The header, data and manifest paths of ``index_name``'s backup in ``backup_dir``."""
    if worker is not None and (isinstance(worker, bool) or worker < 0):
        raise ValueError(f"worker must be a non-negative number, got {worker!r}")
    directory = Path(backup_dir)
    base = FILE_PREFIX + safe_index_name(index_name)
    stem = base if worker is None else f"{base}.w{worker}"
    return BackupPaths(
        prefix=directory / stem,
        header=directory / (stem + HEADER_SUFFIX),
        data=directory / (stem + DATA_SUFFIX),
        manifest=directory / (base + MANIFEST_SUFFIX),
    )


def backup_size_on_disk(backup_dir: str | os.PathLike[str], index_name: str) -> int:
    """Bytes used by every file of ``index_name``'s backup: header, data, manifest, shards."""
    paths = backup_paths(backup_dir, index_name)
    base = paths.prefix.name
    total = 0
    directory = Path(backup_dir)
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        name = entry.name
        if not name.startswith(base):
            continue
        rest = name[len(base) :]
        if rest in (HEADER_SUFFIX, DATA_SUFFIX, MANIFEST_SUFFIX) or _SHARD_FILE.fullmatch(rest):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                continue
    return total


RESTARTED_SUFFIX = ".restarted-"
STALE_SUFFIX = ".stale-"


def set_aside(
    backup_dir: str | os.PathLike[str],
    index_name: str,
    files: Sequence[Path],
    suffix: str,
) -> list[Path]:
    """Move the files of a backup out of the way: ``<name><suffix><time>-<random>``, one
    unique tag for the whole set, so no earlier copy is ever overwritten.

    A backup restarted from scratch (``RESTARTED_SUFFIX``) keeps only its newest copy: the
    earlier ``.restarted-`` copies of ``index_name``'s backup are deleted first, so retries
    never fill the disk. Returns the new paths.
    """
    paths = backup_paths(backup_dir, index_name)
    base = paths.prefix.name
    if suffix == RESTARTED_SUFFIX:
        copy = re.compile(
            re.escape(base)
            + r"(\.w\d+)?("
            + "|".join(map(re.escape, (HEADER_SUFFIX, DATA_SUFFIX, MANIFEST_SUFFIX)))
            + ")"
            + re.escape(RESTARTED_SUFFIX)
            + r".+"
        )
        directory = Path(backup_dir)
        for entry in directory.iterdir() if directory.is_dir() else ():
            if copy.fullmatch(entry.name) and entry not in files:
                entry.unlink(missing_ok=True)
    tag = f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}"
    moved: list[Path] = []
    for path in files:
        target = path.with_name(f"{path.name}{suffix}{tag}")
        path.rename(target)
        moved.append(target)
    if files:
        _fsync_dir(Path(files[0]).parent)
    return moved


# --------------------------------------------------------------------------- helpers


def _writeback_starter() -> Callable[[int, int, int], object] | None:
    """Linux's sync_file_range(2) with SYNC_FILE_RANGE_WRITE, or None where there is none.

    Starting the disk write of each frame as it is appended leaves little for the fsync
    of the next commit to wait for. Durability never rests on it: commits still fsync.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda fd, offset, length: function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2
_start_writeback = _writeback_starter()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    if sys.platform == "win32":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def content_checksum(data: Mapping[str, Any]) -> str:
    """``sha256:`` + hex SHA-256 of ``data`` as canonical JSON (keys sorted, no spaces,
    ASCII with \\u escapes): what a header or manifest file's checksum key holds."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def _sealed(value: BackupHeader | Manifest) -> dict[str, Any]:
    """The file content of a header or manifest: its keys plus their checksum."""
    data: dict[str, Any] = msgspec.to_builtins(value)
    if isinstance(value, Manifest) and value.nodes is None:
        del data["nodes"]  # a version 2 manifest, as earlier releases read it
    key = MANIFEST_CHECKSUM if isinstance(value, Manifest) else HEADER_CHECKSUM
    data[key] = content_checksum(data)
    return data


def _check_checksum(data: Mapping[str, Any], claimed: Any, key: str, path: Path, what: str) -> None:
    """``data`` (without its checksum key) must match ``claimed``; else BackupCorrupt."""
    if claimed is None:
        raise BackupCorrupt(
            f"{what} {path} has no {key}, so it cannot be trusted (edited by hand?); "
            "restore it from a copy"
        )
    if claimed != content_checksum(data):
        raise BackupCorrupt(
            f"{what} {path} does not match its {key}: it was edited or damaged since "
            "redismigrate wrote it; restore it from a copy"
        )


def _write_json_atomically(path: Path, struct_value: BackupHeader | Manifest) -> None:
    """Temp file in the same directory, fsync, os.replace, fsync of the directory."""
    write_document(path, _sealed(struct_value))
    _fsync_dir(path.parent)


def _read_json(path: Path, what: str) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise BackupError(f"{what} {path} cannot be read: {_one_line(exc)}") from None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BackupCorrupt(f"{what} {path} is not valid JSON: {_one_line(exc)}") from None


def _check_format(
    data: Any,
    path: Path,
    what: str,
    expected_format: str,
    versions: tuple[int, ...] = (BACKUP_VERSION,),
) -> None:
    if not isinstance(data, dict):
        raise BackupCorrupt(f"{what} {path} is not a JSON object")
    if data.get("format") != expected_format:
        raise BackupError(
            f"{what} {path} has format {data.get('format')!r}, expected {expected_format!r}"
        )
    version = data.get("version", BACKUP_VERSION)
    if version not in versions or isinstance(version, bool):
        older = (
            " (written by an older redismigrate, without checksums: finish or roll it back "
            "with that version)"
            if version == 1
            else ""
        )
        readable = " and ".join(str(v) for v in versions)
        only = " only" if len(versions) == 1 else ""
        raise BackupError(
            f"{what} {path} is format version {version!r}; this redismigrate reads "
            f"version{'s' if len(versions) > 1 else ''} {readable}{only}{older}"
        )


def _validate_header(header: BackupHeader, where: str) -> None:
    """What the types alone cannot check; BackupError (one line) with the first problem."""
    problems: list[str] = []
    if header.version != BACKUP_VERSION:
        problems.append(f"format version {header.version} (only {BACKUP_VERSION} is supported)")
    if not header.index_name:
        problems.append("the index name is empty")
    if header.batch_size <= 0:
        problems.append("batch_size must be positive")
    # no fields: a migration that rewrites no vectors keeps only its progress header
    seen_document_fields: set[str] = set()
    for name, field in header.fields.items():
        if field.dims <= 0:
            problems.append(f"field {name!r}: dims must be positive")
        for datatype in (field.source_datatype, field.target_datatype):
            if datatype not in VECTOR_DATATYPES:
                problems.append(f"field {name!r}: unknown datatype {datatype!r}")
        if field.document_field in seen_document_fields:
            problems.append(f"document field {field.document_field!r} is backed up twice")
        seen_document_fields.add(field.document_field)
    counters = (
        "dump_completed_batches",
        "quantize_completed_batches",
        "keys_backed_up",
        "keys_reencoded",
        "data_bytes",
    )
    for counter in counters:
        if getattr(header, counter) < 0:
            problems.append(f"{counter} is negative")
    if header.quantize_completed_batches > header.dump_completed_batches:
        problems.append(
            f"quantize_completed_batches ({header.quantize_completed_batches}) is beyond "
            f"dump_completed_batches ({header.dump_completed_batches})"
        )
    if header.data_bytes < FRAME_PREFIX_SIZE * header.dump_completed_batches:
        problems.append(
            f"data_bytes ({header.data_bytes}) is too small to hold "
            f"{header.dump_completed_batches} batches"
        )
    if header.dump_completed_batches == 0 and header.data_bytes:
        problems.append(f"data_bytes is {header.data_bytes} but no batch is counted")
    if header.worker is not None and header.worker < 0:
        problems.append("worker is negative")
    if problems:
        raise BackupError(f"{where}: {problems[0]}")


def read_header(path: str | os.PathLike[str]) -> BackupHeader:
    """The header in ``path``; BackupError / BackupCorrupt (one line) when unusable."""
    header_path = Path(path)
    data = _read_json(header_path, "backup header")
    _check_format(data, header_path, "backup header", BACKUP_FORMAT)
    claimed = data.pop(HEADER_CHECKSUM, None)
    try:
        header = msgspec.convert(data, BackupHeader)
    except msgspec.ValidationError as exc:
        raise BackupCorrupt(
            f"backup header {header_path} is not a valid header: {_one_line(exc)}"
        ) from None
    _validate_header(header, f"backup header {header_path}")
    _check_checksum(data, claimed, HEADER_CHECKSUM, header_path, "backup header")
    return header


def _data_path_for(header_path: Path) -> Path:
    name = header_path.name
    if name.endswith(HEADER_SUFFIX):
        name = name[: -len(HEADER_SUFFIX)]
    return header_path.with_name(name + DATA_SUFFIX)


def _corrupt(data_path: Path, offset: int, reason: str) -> BackupCorrupt:
    return BackupCorrupt(
        f"backup data file {data_path} is corrupt at byte {offset} ({reason}); "
        "restore it from a copy or start a fresh backup"
    )


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, got {type(value).__name__}")


def _bytes_list(values: Sequence[object], what: str) -> list[bytes]:
    if set(map(type, values)) <= {bytes}:
        return list(values)  # type: ignore[arg-type]
    return [_as_bytes(value, what) for value in values]


def encode_frame(batch: BackupBatch) -> bytes:
    """One data frame: the 16-byte prefix followed by the msgpack payload."""
    return b"".join(_frame_parts(batch))


def _frame_parts(batch: BackupBatch) -> tuple[bytes, bytes]:
    """A frame's prefix and payload (written one after the other, not joined)."""
    payload = _BATCH_ENCODER.encode(batch)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BackupError(
            f"batch {batch.batch} is {len(payload)} bytes, more than a frame can hold "
            f"({MAX_PAYLOAD_BYTES}); use a smaller batch size"
        )
    crc = zlib.crc32(payload) & 0xFFFFFFFF
    return FRAME_PREFIX.pack(FRAME_MAGIC, len(payload), crc, batch.batch), payload


_BYTES_OR_NONE = frozenset({bytes, type(None)})
_BUFFERS_OR_NONE = frozenset({bytes, memoryview, type(None)})


# --------------------------------------------------------------------------- one backup


class VectorBackup:
    """One backup (or one worker's shard): a header file and an append-only data file.

    Get one with ``create`` (new backup), ``open`` (resume; may write) or ``load``
    (read only). The first write takes an exclusive lock on the data file, so two
    processes cannot append to the same backup.
    """

    def __init__(
        self, header_path: Path, data_path: Path, header: BackupHeader, *, read_only: bool
    ) -> None:
        self._header_path = header_path
        self._data_path = data_path
        self._header = header
        self._read_only = read_only
        self._writer: IO[bytes] | None = None
        self._closed = False
        self._broken: str | None = None
        # appended but not yet counted by the header: batches, keys, end offset
        self._pending_batches = 0
        self._pending_keys = 0
        self._pending_end = header.data_bytes

    # opening ------------------------------------------------------------------
    @classmethod
    def create(cls, backup_dir: str | os.PathLike[str], header: BackupHeader) -> VectorBackup:
        """Start a new backup in ``backup_dir``; refuses when one is already there."""
        paths = backup_paths(backup_dir, header.index_name, header.worker)
        where = f"new backup of index {header.index_name!r}"
        _validate_header(header, where)
        if (
            header.phase != "dump"
            or header.dump_completed_batches
            or header.quantize_completed_batches
            or header.keys_backed_up
            or header.keys_reencoded
            or header.data_bytes
        ):
            raise BackupError(f"{where}: a new backup starts in phase 'dump' with zero counters")
        directory = Path(backup_dir)
        if not directory.is_dir():
            raise BackupError(f"backup directory {directory} does not exist")
        if paths.header.exists():
            raise BackupError(
                f"a backup header already exists at {paths.header}; resume it, or move it "
                "away to start a fresh backup"
            )
        if paths.data.exists() and paths.data.stat().st_size > 0:
            raise BackupError(
                f"backup data file {paths.data} exists without a header; move it away to "
                "start a fresh backup"
            )
        now = _now()
        header = msgspec.structs.replace(
            header, created_at=header.created_at or now, updated_at=now
        )
        # the data file first, so a header never exists without it
        with open_private(paths.data, "wb") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(directory)
        _write_header_exclusively(paths.header, header)
        return cls(paths.header, paths.data, header, read_only=False)

    @classmethod
    def open(
        cls, backup_dir: str | os.PathLike[str], index_name: str, worker: int | None = None
    ) -> VectorBackup | None:
        """The existing backup of ``index_name`` (to resume it), or None when there is none."""
        paths = backup_paths(backup_dir, index_name, worker)
        if not paths.header.exists():
            return None
        header = read_header(paths.header)
        if header.index_name != index_name or header.worker != worker:
            raise BackupError(
                f"backup header {paths.header} belongs to index {header.index_name!r} "
                f"(worker {header.worker}), not {index_name!r} (worker {worker})"
            )
        _check_data_size(paths.data, header)
        return cls(paths.header, paths.data, header, read_only=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorBackup:
        """A backup for reading only.

        ``path`` is the header file, the common prefix of the backup's files
        (``.../migration_backup_<I>``), or a directory holding exactly one
        single-worker backup.
        """
        header_path = _find_header(Path(path))
        header = read_header(header_path)
        data_path = _data_path_for(header_path)
        _check_data_size(data_path, header)
        return cls(header_path, data_path, header, read_only=True)

    # state --------------------------------------------------------------------
    @property
    def header(self) -> BackupHeader:
        return self._header

    @property
    def header_path(self) -> Path:
        return self._header_path

    @property
    def data_path(self) -> Path:
        return self._data_path

    @property
    def read_only(self) -> bool:
        return self._read_only

    def batch_count(self) -> int:
        """Committed batches in the data file."""
        return self._header.dump_completed_batches

    @property
    def uncommitted_batches(self) -> int:
        """Batches appended with ``durable=False`` that no header counts yet."""
        return self._pending_batches

    # writing ------------------------------------------------------------------
    def open_for_append(self) -> None:
        """Lock the data file for writing and cut off any uncommitted tail.

        ``append_batch`` calls this itself; calling it early only moves the work.
        """
        self._check_writable()
        if self._writer is None:
            self._writer = self._lock_and_recheck()
        if not self._pending_batches:  # else the tail is this object's own frames
            self._truncate_tail(self._writer)

    def append_batch(
        self,
        keys: Sequence[bytes],
        vectors: Mapping[str, Sequence[bytes | memoryview | None]],
        *,
        durable: bool = True,
    ) -> int:
        """Append one batch of original vectors; return its batch number.

        ``vectors`` has one entry per field of the header, each as long as ``keys``;
        a value is bytes, a contiguous memoryview, or None (the document has no such field).
        With ``durable`` (the default) the frame is fsynced and the header counting it
        replaced before this returns. Without, the frame is only written: ``commit()``
        (or the next durable append or ``update``) makes it and those before it count.
        """
        self._check_writable()
        if self._header.phase != "dump":
            raise BackupError(
                f"backup {self._header_path} is in phase {self._header.phase!r}; batches are "
                "appended only in phase 'dump'"
            )
        key_list = _bytes_list(keys, "a key")
        expected = set(self._header.fields)
        if set(vectors) != expected:
            missing = sorted(expected - set(vectors))
            extra = sorted(set(vectors) - expected)
            raise ValueError(
                "vectors must hold exactly the header's fields "
                f"(missing {missing}, unknown {extra})"
            )
        columns: dict[str, list[Any]] = {}
        for field in self._header.fields:
            column = vectors[field]
            if len(column) != len(key_list):
                raise ValueError(
                    f"field {field!r} has {len(column)} values for {len(key_list)} keys"
                )
            kinds = set(map(type, column))
            if kinds <= _BYTES_OR_NONE or (
                kinds <= _BUFFERS_OR_NONE
                and all(v.c_contiguous for v in column if type(v) is memoryview)
            ):
                columns[field] = list(column)  # views are written as they are, not copied
            else:
                columns[field] = [
                    None if value is None else _as_bytes(value, f"a value of field {field!r}")
                    for value in column
                ]
        if len(set(key_list)) != len(key_list):
            key_list, columns = _without_repeats(key_list, columns)
        if self._writer is None or not self._pending_batches:
            self.open_for_append()
        assert self._writer is not None
        number = self._header.dump_completed_batches + self._pending_batches
        prefix, payload = _frame_parts(BackupBatch(batch=number, keys=key_list, vectors=columns))
        start = self._pending_end
        try:
            self._writer.seek(start)
            self._writer.write(prefix)
            self._writer.write(payload)
        except OSError as exc:
            # nothing committed: the next append (in a fresh process) cuts this tail off
            self._broken = f"writing batch {number} failed: {_one_line(exc)}"
            raise BackupError(
                f"cannot write backup data file {self._data_path}: {_one_line(exc)}"
            ) from None
        self._pending_batches += 1
        self._pending_keys += len(key_list)
        self._pending_end = start + len(prefix) + len(payload)
        if durable:
            self.commit()
        elif _start_writeback is not None:
            try:
                self._writer.flush()
            except OSError as exc:
                self._broken = f"writing batch {number} failed: {_one_line(exc)}"
                raise BackupError(
                    f"cannot write backup data file {self._data_path}: {_one_line(exc)}"
                ) from None
            _start_writeback(self._writer.fileno(), start, self._pending_end - start)
        return number

    def commit(self) -> BackupHeader:
        """Make every appended frame durable and count it in the header (no-op when none)."""
        self._check_writable()
        if not self._pending_batches:
            return self._header
        self._commit_header(self._with_pending(self._header))
        return self._header

    def _with_pending(self, header: BackupHeader) -> BackupHeader:
        """``header`` counting the pending frames, after fsyncing them (none: unchanged)."""
        if not self._pending_batches:
            return header
        assert self._writer is not None
        try:
            self._writer.flush()
            os.fsync(self._writer.fileno())
        except OSError as exc:
            self._broken = f"writing batches failed: {_one_line(exc)}"
            raise BackupError(
                f"cannot write backup data file {self._data_path}: {_one_line(exc)}"
            ) from None
        counted = msgspec.structs.replace(
            header,
            dump_completed_batches=header.dump_completed_batches + self._pending_batches,
            keys_backed_up=header.keys_backed_up + self._pending_keys,
            data_bytes=self._pending_end,
            updated_at=_now(),
        )
        self._pending_batches = self._pending_keys = 0
        return counted

    def update(self, **changes: Any) -> BackupHeader:
        """Record progress: ``phase``, ``quantize_completed_batches``, ``keys_reencoded``.

        The phase only moves forward through BACKUP_PHASES and the counters
        never go down; ``reset_to`` is the one way back.
        """
        return self._change(changes, allow_backwards=False)

    def reset_to(self, phase: str, **changes: Any) -> BackupHeader:
        """Move the phase back (to ``phase`` or any earlier one), e.g. after a rollback.

        Counters may go down here too (``quantize_completed_batches=0`` after the
        originals were restored). The dump itself (its batches and counters) is
        never changed.
        """
        return self._change({**changes, "phase": phase}, allow_backwards=True)

    def _change(self, changes: dict[str, Any], *, allow_backwards: bool) -> BackupHeader:
        self._check_writable()
        unknown = set(changes) - set(BackupHeader.__struct_fields__)
        if unknown:
            raise TypeError(f"BackupHeader has no field(s) {sorted(unknown)}")
        protected = set(changes) - _UPDATABLE
        if protected:
            raise ValueError(
                f"{sorted(protected)} cannot be changed by update(); only {sorted(_UPDATABLE)} can"
            )
        current = self._header
        where = f"backup {self._header_path}"
        if "phase" in changes:
            phase = changes["phase"]
            if phase not in BACKUP_PHASES:
                raise ValueError(f"phase must be one of {', '.join(BACKUP_PHASES)}; got {phase!r}")
            old, new = BACKUP_PHASES.index(current.phase), BACKUP_PHASES.index(phase)
            if allow_backwards and new > old:
                raise BackupError(
                    f"{where}: reset_to moves back, but {phase!r} comes after {current.phase!r}"
                )
            if not allow_backwards and new < old:
                raise BackupError(
                    f"{where}: phase cannot move back from {current.phase!r} to {phase!r}"
                )
        for counter in ("quantize_completed_batches", "keys_reencoded"):
            if counter not in changes:
                continue
            value = changes[counter]
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{counter} must be an int, got {type(value).__name__}")
            if not allow_backwards and value < getattr(current, counter):
                raise BackupError(
                    f"{where}: {counter} cannot go down ({getattr(current, counter)} -> {value})"
                )
        new_header = msgspec.structs.replace(
            self._with_pending(current), **changes, updated_at=_now()
        )
        _validate_header(new_header, where)
        if self._writer is None:
            self._writer = self._lock_and_recheck()
        self._commit_header(new_header)
        return new_header

    def _commit_header(self, header: BackupHeader) -> None:
        try:
            _write_json_atomically(self._header_path, header)
        except OSError as exc:
            # The rename may or may not be durable; only a fresh open knows which.
            self._broken = f"writing the header failed: {_one_line(exc)}"
            raise BackupError(
                f"cannot write backup header {self._header_path}: {_one_line(exc)}"
            ) from None
        self._header = header

    def _check_writable(self) -> None:
        if self._closed:
            raise BackupError(f"backup {self._header_path} is closed")
        if self._read_only:
            raise BackupError(f"backup {self._header_path} was loaded read-only")
        if self._broken is not None:
            raise BackupError(
                f"backup {self._header_path}: an earlier write failed ({self._broken}); "
                "open it again to resume"
            )

    def _lock_and_recheck(self) -> IO[bytes]:
        """Open the data file for writing under an exclusive lock; the header must not
        have changed on disk since this object read it (another writer)."""
        try:
            handle = open_private(self._data_path, "r+b")  # kept open until close()
        except FileNotFoundError:
            if self._header.data_bytes:
                raise _missing_data(self._data_path, self._header) from None
            handle = open_private(self._data_path, "w+b")
            _fsync_dir(self._data_path.parent)
        try:
            if sys.platform != "win32":
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise BackupError(
                        f"backup data file {self._data_path} is locked by another writer"
                    ) from None
            on_disk = read_header(self._header_path)
            if on_disk != self._header:
                raise BackupError(
                    f"backup header {self._header_path} changed on disk since it was opened "
                    "(another writer?); open it again"
                )
        except BaseException:
            handle.close()
            raise
        return handle

    def _truncate_tail(self, handle: IO[bytes]) -> None:
        size = os.fstat(handle.fileno()).st_size
        committed = self._header.data_bytes
        if size < committed:
            raise BackupCorrupt(
                f"backup data file {self._data_path} is {size} bytes but its header counts "
                f"{committed} committed bytes (truncated?); restore it from a copy"
            )
        if size > committed:
            handle.truncate(committed)
            handle.flush()
            os.fsync(handle.fileno())

    # reading ------------------------------------------------------------------
    def iter_frames(self, start: int = 0) -> Iterator[BackupBatch]:
        """The committed batches from number ``start`` on, one frame in memory at a time.

        Frames before ``start`` are skipped by their prefixes (payloads not read).
        """
        return _iter_frames(self._data_path, self._header, start)

    def iter_frames_newest_first(self) -> Iterator[BackupBatch]:
        """The committed batches, last appended first, one frame in memory at a time
        (where a key was backed up more than once, its newest original comes first)."""
        count = self.verify()  # every frame checked once, so the walk back can trust them
        return _frames_newest_first(self._data_path, self._header, count)

    def iter_batches(
        self, start: int = 0
    ) -> Iterator[tuple[list[bytes], dict[bytes, dict[str, bytes]]]]:
        """``(keys, {key: {field: original_bytes}})`` per committed batch.

        ``field`` is the schema field name, as in ``header.fields`` (its hash field
        is ``header.fields[field].document_field``); a field the document lacked is
        left out, so a key with none maps to ``{}``.
        """
        frames = self.iter_frames(start)  # checks ``start`` now, not at the first next()
        return ((frame.keys, _batch_mapping(frame)) for frame in frames)

    def verify(self) -> int:
        """Read and check every committed frame; return how many there are."""
        count = 0
        for _ in self.iter_frames():
            count += 1
        return count

    # closing ------------------------------------------------------------------
    def close(self) -> None:
        """Commit appended frames (when nothing failed), then release the data file
        (released also when that commit fails)."""
        try:
            if not self._closed and self._pending_batches and self._broken is None:
                self.commit()
        finally:
            self._closed = True
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()  # releases the lock

    def __enter__(self) -> VectorBackup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        h = self._header
        return (
            f"VectorBackup({str(self._header_path)!r}, phase={h.phase!r}, "
            f"batches={h.dump_completed_batches}, keys={h.keys_backed_up})"
        )


def _write_header_exclusively(path: Path, header: BackupHeader) -> None:
    """Write a new header atomically, failing if one appeared meanwhile (no clobbering)."""
    tmp = path.with_name(f".new-{os.getpid()}-{path.name}")  # ends in .json: written as JSON
    try:
        write_document(tmp, _sealed(header))
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise BackupError(f"a backup header already exists at {path}") from None
        except OSError:  # no hard links on this file system
            if path.exists():
                raise BackupError(f"a backup header already exists at {path}") from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _missing_data(data_path: Path, header: BackupHeader) -> BackupCorrupt:
    return BackupCorrupt(
        f"backup data file {data_path} is missing but its header counts "
        f"{header.data_bytes} committed bytes; restore it from a copy"
    )


def _check_data_size(data_path: Path, header: BackupHeader) -> None:
    try:
        size = data_path.stat().st_size
    except FileNotFoundError:
        if header.data_bytes:
            raise _missing_data(data_path, header) from None
        return
    if size < header.data_bytes:
        raise BackupCorrupt(
            f"backup data file {data_path} is {size} bytes but its header counts "
            f"{header.data_bytes} committed bytes (truncated?); restore it from a copy"
        )


def _find_header(path: Path) -> Path:
    if path.is_dir():
        return _single_header_in(path)
    if path.name.endswith(HEADER_SUFFIX) and path.is_file():
        return path
    if path.name.endswith(MANIFEST_SUFFIX):
        raise BackupError(f"{path} is the manifest of a multi-worker backup; use ShardedBackup")
    candidate = path.with_name(path.name + HEADER_SUFFIX)
    if candidate.is_file():
        return candidate
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    if manifest.is_file():
        raise BackupError(f"{path} is a multi-worker backup ({manifest}); use ShardedBackup")
    raise BackupError(f"no backup at {path} (looked for {candidate})")


def _single_header_in(directory: Path) -> Path:
    singles: list[Path] = []
    shards = 0
    for candidate in sorted(directory.glob(FILE_PREFIX + "*" + HEADER_SUFFIX)):
        if read_header(candidate).worker is None:
            singles.append(candidate)
        else:
            shards += 1
    if len(singles) == 1:
        return singles[0]
    if not singles:
        if shards:
            raise BackupError(
                f"{directory} holds only a multi-worker backup; use ShardedBackup.load"
            )
        raise BackupError(f"no backup header in {directory}")
    names = ", ".join(p.name for p in singles)
    raise BackupError(f"{directory} holds {len(singles)} backups ({names}); name one")


def _iter_frames(data_path: Path, header: BackupHeader, start: int) -> Iterator[BackupBatch]:
    count = header.dump_completed_batches
    end = header.data_bytes
    if start < 0 or start > count:
        raise ValueError(f"start must be between 0 and {count}, got {start}")
    return _frames(data_path, header, start, count, end)


def _frames(
    data_path: Path,
    header: BackupHeader,
    start: int,
    count: int,
    end: int,
    origin: int | None = None,
) -> Iterator[BackupBatch]:
    """Frames ``start`` to ``count - 1``, walking the prefixes from the first frame (or,
    with ``origin``, the byte offset of frame ``start``, known from an earlier walk)."""
    if count == 0 and end == 0:
        return
    fields = set(header.fields)
    try:
        handle = open(data_path, "rb")  # noqa: SIM115 (the with below closes it)
    except FileNotFoundError:
        raise _missing_data(data_path, header) from None
    with handle:
        offset = 0 if origin is None else origin
        for number in range(0 if origin is None else start, count):
            if offset + FRAME_PREFIX_SIZE > end:
                raise _corrupt(
                    data_path,
                    offset,
                    f"the header counts {count} batches but only {number} fit in its "
                    f"{end} committed bytes",
                )
            handle.seek(offset)
            prefix = handle.read(FRAME_PREFIX_SIZE)
            if len(prefix) < FRAME_PREFIX_SIZE:
                raise _corrupt(data_path, offset, "short frame: the file ends inside a prefix")
            magic, length, crc, frame_number = FRAME_PREFIX.unpack(prefix)
            if magic != FRAME_MAGIC:
                raise _corrupt(data_path, offset, f"bad magic {magic!r}, expected {FRAME_MAGIC!r}")
            if frame_number != number:
                raise _corrupt(
                    data_path, offset, f"frame holds batch {frame_number}, expected {number}"
                )
            frame_end = offset + FRAME_PREFIX_SIZE + length
            if frame_end > end:
                raise _corrupt(
                    data_path,
                    offset,
                    f"short frame: {length} payload bytes run past the committed end {end}",
                )
            if number >= start:
                payload = handle.read(length)
                if len(payload) < length:
                    raise _corrupt(data_path, offset, "short frame: the file ends inside it")
                if zlib.crc32(payload) & 0xFFFFFFFF != crc:
                    raise _corrupt(data_path, offset, "checksum mismatch")
                try:
                    batch = _BATCH_DECODER.decode(payload)
                except msgspec.DecodeError as exc:
                    raise _corrupt(
                        data_path, offset, f"payload does not decode: {_one_line(exc)}"
                    ) from None
                del payload
                problem = _frame_problem(batch, number, fields)
                if problem:
                    raise _corrupt(data_path, offset, problem)
                yield batch
                del batch
            offset = frame_end
        if offset != end and count == header.dump_completed_batches:
            raise _corrupt(
                data_path,
                offset,
                f"{end - offset} committed bytes follow the last counted batch",
            )


def _frames_newest_first(
    data_path: Path, header: BackupHeader, count: int
) -> Iterator[BackupBatch]:
    """Frames ``count - 1`` down to 0 (the data file was checked whole just before)."""
    starts: list[int] = []
    with open(data_path, "rb") as handle:
        offset = 0
        for _ in range(count):
            starts.append(offset)
            handle.seek(offset)
            _, length, _, _ = FRAME_PREFIX.unpack(handle.read(FRAME_PREFIX_SIZE))
            offset += FRAME_PREFIX_SIZE + length
    for number in reversed(range(count)):
        yield from _frames(data_path, header, number, number + 1, header.data_bytes, starts[number])


def _frame_problem(batch: BackupBatch, number: int, fields: set[str]) -> str | None:
    if batch.batch != number:
        return f"payload says batch {batch.batch}, prefix says {number}"
    if set(batch.vectors) != fields:
        return f"payload fields {sorted(batch.vectors)} differ from the header's {sorted(fields)}"
    for name, column in batch.vectors.items():
        if len(column) != len(batch.keys):
            return f"field {name!r} has {len(column)} values for {len(batch.keys)} keys"
    return None


def _batch_mapping(frame: BackupBatch) -> dict[bytes, dict[str, bytes]]:
    mapping: dict[bytes, dict[str, bytes]] = {key: {} for key in frame.keys}
    for name, column in frame.vectors.items():
        for key, value in zip(frame.keys, column, strict=True):
            if value is not None:
                mapping[key][name] = value
    return mapping


def _without_repeats(
    keys: list[bytes], columns: dict[str, list[bytes | None]]
) -> tuple[list[bytes], dict[str, list[bytes | None]]]:
    """Drop later copies of a key that came twice with the same values (SCAN may
    return a key twice); a key that came twice with different values is refused."""
    first: dict[bytes, int] = {}
    keep: list[int] = []
    for i, key in enumerate(keys):
        if key not in first:
            first[key] = i
            keep.append(i)
            continue
        j = first[key]
        if any(column[i] != column[j] for column in columns.values()):
            raise ValueError(f"key {key!r} appears twice in one batch with different values")
    return [keys[i] for i in keep], {
        name: [column[i] for i in keep] for name, column in columns.items()
    }


# --------------------------------------------------------------------------- many workers


def new_manifest(
    index_name: str, plan_hash: str, workers: int, nodes: Sequence[ShardNode] | None = None
) -> Manifest:
    """The manifest of a ``workers``-way backup, with the standard shard file names;
    with ``nodes`` (a cluster's primaries, one per worker) format version 3."""
    if workers <= 0:
        raise ValueError(f"workers must be positive, got {workers}")
    shards = []
    for worker in range(workers):
        paths = backup_paths(".", index_name, worker)
        shards.append(ShardInfo(worker=worker, header=paths.header.name, data=paths.data.name))
    return Manifest(
        version=BACKUP_VERSION if nodes is None else MANIFEST_CLUSTER_VERSION,
        index_name=index_name,
        plan_hash=plan_hash,
        workers=workers,
        shards=shards,
        nodes=None if nodes is None else list(nodes),
    )


def _validate_manifest(manifest: Manifest, where: str) -> None:
    problems: list[str] = []
    if manifest.version not in MANIFEST_VERSIONS:
        problems.append(
            f"format version {manifest.version} (only {' and '.join(map(str, MANIFEST_VERSIONS))} "
            "are supported)"
        )
    elif (manifest.nodes is not None) != (manifest.version == MANIFEST_CLUSTER_VERSION):
        problems.append(
            f"format version {manifest.version} "
            + ("lists no cluster nodes" if manifest.nodes is None else "lists cluster nodes")
        )
    if manifest.workers <= 0:
        problems.append("workers must be positive")
    if [s.worker for s in manifest.shards] != list(range(manifest.workers)):
        problems.append(f"shards must be workers 0..{manifest.workers - 1} in order")
    if manifest.nodes is not None:
        if [n.worker for n in manifest.nodes] != list(range(manifest.workers)):
            problems.append(f"nodes must be workers 0..{manifest.workers - 1} in order")
        if len({n.node_id for n in manifest.nodes}) != len(manifest.nodes):
            problems.append("a cluster node is named for two shards")
    for shard in manifest.shards:
        for name in (shard.header, shard.data):
            if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
                problems.append(f"shard file {name!r} is not a plain file name")
    if problems:
        raise BackupError(f"{where}: {problems[0]}")


def write_manifest(backup_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``manifest`` next to its shards (atomically); an identical one may exist."""
    _validate_manifest(manifest, f"manifest of index {manifest.index_name!r}")
    path = backup_paths(backup_dir, manifest.index_name).manifest
    if path.exists():
        if read_manifest(path) == manifest:
            return path
        raise BackupError(
            f"a different backup manifest already exists at {path}; move it away to start "
            "a fresh backup"
        )
    _write_json_atomically(path, manifest)
    return path


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest in ``path``; BackupError / BackupCorrupt (one line) when unusable."""
    manifest_path = Path(path)
    data = _read_json(manifest_path, "backup manifest")
    _check_format(data, manifest_path, "backup manifest", MANIFEST_FORMAT, MANIFEST_VERSIONS)
    claimed = data.pop(MANIFEST_CHECKSUM, None)
    try:
        manifest = msgspec.convert(data, Manifest)
    except msgspec.ValidationError as exc:
        raise BackupCorrupt(
            f"backup manifest {manifest_path} is not a valid manifest: {_one_line(exc)}"
        ) from None
    _validate_manifest(manifest, f"backup manifest {manifest_path}")
    _check_checksum(data, claimed, MANIFEST_CHECKSUM, manifest_path, "backup manifest")
    return manifest


class ShardedBackup:
    """All shards of a multi-worker backup, read only, in worker order."""

    def __init__(self, manifest_path: Path, manifest: Manifest, shards: list[VectorBackup]):
        self._manifest_path = manifest_path
        self._manifest = manifest
        self._shards = shards

    @classmethod
    def open(cls, backup_dir: str | os.PathLike[str], index_name: str) -> ShardedBackup | None:
        """The multi-worker backup of ``index_name``, or None when it has no manifest."""
        path = backup_paths(backup_dir, index_name).manifest
        if not path.exists():
            return None
        backup = cls._from_manifest(path)
        if backup.manifest.index_name != index_name:
            raise BackupError(
                f"backup manifest {path} belongs to index {backup.manifest.index_name!r}, "
                f"not {index_name!r}"
            )
        return backup

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShardedBackup:
        """``path`` is the manifest, the common prefix ``.../migration_backup_<I>``, or a
        directory holding exactly one manifest."""
        p = Path(path)
        if p.is_dir():
            manifests = sorted(p.glob(FILE_PREFIX + "*" + MANIFEST_SUFFIX))
            if len(manifests) != 1:
                raise BackupError(
                    f"{p} holds {len(manifests)} backup manifests; name the one to load"
                )
            return cls._from_manifest(manifests[0])
        if p.name.endswith(MANIFEST_SUFFIX):
            return cls._from_manifest(p)
        return cls._from_manifest(p.with_name(p.name + MANIFEST_SUFFIX))

    @classmethod
    def _from_manifest(cls, manifest_path: Path) -> ShardedBackup:
        manifest = read_manifest(manifest_path)
        directory = manifest_path.parent
        shards: list[VectorBackup] = []
        for shard in manifest.shards:
            header_path = directory / shard.header
            data_path = directory / shard.data
            if not header_path.is_file():
                raise BackupError(
                    f"shard {shard.worker} of backup manifest {manifest_path} is missing: "
                    f"no header file {header_path}"
                )
            header = read_header(header_path)
            if (header.index_name, header.worker, header.plan_hash) != (
                manifest.index_name,
                shard.worker,
                manifest.plan_hash,
            ):
                raise BackupError(
                    f"shard header {header_path} is index {header.index_name!r} worker "
                    f"{header.worker} plan {header.plan_hash!r}; the manifest {manifest_path} "
                    f"expects {manifest.index_name!r} worker {shard.worker} plan "
                    f"{manifest.plan_hash!r}"
                )
            _check_data_size(data_path, header)
            shards.append(VectorBackup(header_path, data_path, header, read_only=True))
        return cls(manifest_path, manifest, shards)

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def shards(self) -> list[VectorBackup]:
        return list(self._shards)

    def batch_count(self) -> int:
        return sum(shard.batch_count() for shard in self._shards)

    def keys_backed_up(self) -> int:
        return sum(shard.header.keys_backed_up for shard in self._shards)

    def iter_frames(self) -> Iterator[tuple[int, BackupBatch]]:
        """``(worker, batch)`` for every committed batch: worker 0's first, then 1's, ..."""
        for shard in self._shards:
            worker = shard.header.worker
            assert worker is not None
            for frame in shard.iter_frames():
                yield worker, frame

    def iter_batches(self) -> Iterator[tuple[list[bytes], dict[bytes, dict[str, bytes]]]]:
        """Same shape as ``VectorBackup.iter_batches``, over all shards in worker order."""
        for shard in self._shards:
            yield from shard.iter_batches()

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> ShardedBackup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load_backup(path: str | os.PathLike[str]) -> VectorBackup | ShardedBackup:
    """Whichever backup ``path`` names (header, manifest, prefix or directory), read only."""
    p = Path(path)
    if p.name.endswith(MANIFEST_SUFFIX):
        return ShardedBackup.load(p)
    if p.is_dir():
        has_single = any(
            read_header(h).worker is None for h in p.glob(FILE_PREFIX + "*" + HEADER_SUFFIX)
        )
        if not has_single and any(p.glob(FILE_PREFIX + "*" + MANIFEST_SUFFIX)):
            return ShardedBackup.load(p)
        return VectorBackup.load(p)
    if (
        not p.name.endswith(HEADER_SUFFIX)
        and not p.with_name(p.name + HEADER_SUFFIX).exists()
        and p.with_name(p.name + MANIFEST_SUFFIX).exists()
    ):
        return ShardedBackup.load(p)
    return VectorBackup.load(p)


# --------------------------------------------------------------------------- verification


class BackupContents(msgspec.Struct, frozen=True, kw_only=True):
    """What ``verify_backup`` read: every header, the manifest, and the frame totals."""

    header: BackupHeader
    manifest: Manifest | None
    shards: list[BackupHeader]
    frames: int
    keys: int

    @property
    def headers(self) -> list[BackupHeader]:
        return [self.header, *self.shards]


# what every shard of one backup shares with its main header
_IDENTITY = (
    "index_name",
    "plan_hash",
    "source_schema_hash",
    "target_schema_hash",
    "fields",
    "batch_size",
)


def verify_backup(backup_dir: str | os.PathLike[str], index_name: str) -> BackupContents:
    """Read and check every file of ``index_name``'s backup in ``backup_dir``.

    The header and manifest checksums, that every shard belongs to the same backup, and
    every committed frame (CRC, decoding, numbering, count and bytes as the header says,
    keys as counted). One frame in memory at a time. BackupError / BackupCorrupt (one
    line, naming the file) at the first problem.
    """
    paths = backup_paths(backup_dir, index_name)
    if not paths.header.exists():
        raise BackupError(f"no backup of index {index_name!r} in {backup_dir} ({paths.header})")
    header = read_header(paths.header)
    if header.index_name != index_name or header.worker is not None:
        raise BackupCorrupt(
            f"backup header {paths.header} belongs to index {header.index_name!r} "
            f"(worker {header.worker}), not {index_name!r}"
        )
    sources = [(paths.data, header)]
    manifest: Manifest | None = None
    shards: list[BackupHeader] = []
    if paths.manifest.exists():
        manifest = read_manifest(paths.manifest)
        if (manifest.index_name, manifest.plan_hash) != (index_name, header.plan_hash):
            raise BackupCorrupt(
                f"backup manifest {paths.manifest} is for index {manifest.index_name!r} plan "
                f"{manifest.plan_hash!r}, its header {paths.header} for {index_name!r} plan "
                f"{header.plan_hash!r}"
            )
        for shard in manifest.shards:
            shard_paths = backup_paths(backup_dir, index_name, shard.worker)
            if (shard.header, shard.data) != (shard_paths.header.name, shard_paths.data.name):
                raise BackupCorrupt(
                    f"backup manifest {paths.manifest} names files {shard.header!r} and "
                    f"{shard.data!r} for worker {shard.worker}, not "
                    f"{shard_paths.header.name!r} and {shard_paths.data.name!r}"
                )
            if not shard_paths.header.exists():
                raise BackupCorrupt(
                    f"shard {shard.worker} of backup manifest {paths.manifest} is missing: "
                    f"no header file {shard_paths.header}"
                )
            shard_header = read_header(shard_paths.header)
            differ = [
                name for name in _IDENTITY if getattr(shard_header, name) != getattr(header, name)
            ]
            if shard_header.worker != shard.worker:
                differ.insert(0, "worker")
            if differ:
                raise BackupCorrupt(
                    f"shard header {shard_paths.header} does not belong to the backup of "
                    f"{paths.header}: {', '.join(differ)} differ"
                )
            shards.append(shard_header)
            sources.append((shard_paths.data, shard_header))
    frames = keys = 0
    for data_path, counted in sources:
        _check_data_size(data_path, counted)
        keys_here = 0
        for batch in _iter_frames(data_path, counted, 0):
            frames += 1
            keys_here += len(batch.keys)
        if keys_here != counted.keys_backed_up:
            raise BackupCorrupt(
                f"backup data file {data_path} holds {keys_here} keys but its header counts "
                f"{counted.keys_backed_up}; restore it from a copy"
            )
        keys += keys_here
    return BackupContents(header=header, manifest=manifest, shards=shards, frames=frames, keys=keys)
