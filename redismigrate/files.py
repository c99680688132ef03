"""Reading and writing the YAML and JSON files people review (schemas, patches, plans)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar, cast

import msgspec
import yaml

from redismigrate.errors import SchemaError

D = TypeVar("D", bound="ReviewableFile")
T = TypeVar("T")


def convert_document(
    data: Any, kind: type[T], *, source: str, what: str, version: int | None = None
) -> T:
    """Typed data from plain data: one SchemaError line for a wrong shape, an unsupported
    ``version`` or an unknown key."""
    if not isinstance(data, dict):
        raise SchemaError(f"{source}: a {what} must be a mapping")
    if version is not None and data.get("version") != version:
        raise SchemaError(
            f"{source}: {what} version {data.get('version')!r} is not supported "
            f"(supported: {version})"
        )
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {exc}") from None


def read_text_file(path: str | Path, *, what: str) -> str:
    """The text of ``path``; SchemaError (one line, naming ``what``) when it cannot be read."""
    p = Path(path)
    if not p.exists():
        raise SchemaError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise SchemaError(f"{what} {str(p)!r} is a directory, not a file")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{what} {str(p)!r} cannot be read: {exc}") from None


def parse_yaml(text: str, source: str) -> Any:
    """Plain data from YAML (safe loader: a file is data and never runs code)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SchemaError(f"{source}: not valid YAML{where}: {problem}") from None


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{source}: not valid JSON ({exc})") from None


def load_document(path: str | Path, *, what: str) -> Any:
    """Plain data from a ``.json`` file, or from YAML for any other name."""
    text = read_text_file(path, what=what)
    if str(path).endswith(".json"):
        return parse_json(text, str(path))
    return parse_yaml(text, str(path))


def yaml_text(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


PRIVATE_FILE_MODE = 0o600
_OPEN_FLAGS = {
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+b": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "r+b": os.O_RDWR,
}


def open_private(path: str | Path, mode: str) -> IO[bytes]:
    """Open ``path`` in binary ``mode`` (``wb``, ``w+b`` or ``r+b``) as a file only its owner
    may read or write: created 0600 whatever the umask, and an existing file made 0600."""
    flags = _OPEN_FLAGS[mode] | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        if hasattr(os, "fchmod"):
            with contextlib.suppress(OSError):  # an existing file someone else owns
                os.fchmod(fd, PRIVATE_FILE_MODE)
        return cast(IO[bytes], os.fdopen(fd, mode))
    except BaseException:
        os.close(fd)
        raise


def write_document(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON (``.json``) or YAML, atomically: a reader never sees half a file.

    The file is created 0600 (a temporary file renamed into place), like every file
    redismigrate writes: plans and reports can name keys, backups hold the data.
    """
    target = Path(path)
    text = json.dumps(data, indent=2) + "\n" if target.suffix == ".json" else yaml_text(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ReviewableFile:
    """Mixin for file-format structs: ``to_yaml``, ``dump`` and ``load`` from ``to_dict``."""

    __slots__ = ()
    file_kind: ClassVar[str] = "file"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[D], data: Any, *, source: str = "file") -> D:
        raise NotImplementedError

    def to_yaml(self) -> str:
        return yaml_text(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def dump(self, path: str | Path) -> None:
        write_document(path, self.to_dict())

    @classmethod
    def from_yaml(cls: type[D], text: str, *, source: str | None = None) -> D:
        source = source or cls.file_kind
        return cls.from_dict(parse_yaml(text, source), source=source)

    @classmethod
    def from_json(cls: type[D], text: str, *, source: str | None = None) -> D:
        source = source or cls.file_kind
        return cls.from_dict(parse_json(text, source), source=source)

    @classmethod
    def load(cls: type[D], path: str | Path) -> D:
        """Load from a YAML or JSON file; SchemaError names any problem in one line."""
        return cls.from_dict(load_document(path, what=cls.file_kind), source=str(path))
