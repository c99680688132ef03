"""Key names as text, for people and for the YAML and JSON files they review.

A Redis key is bytes and need not be UTF-8. :func:`key_text` is the one way a key
becomes text anywhere in redismigrate (plan key samples, reports, validation errors,
messages): UTF-8 keys as they are, any other key with each byte that is not part of
UTF-8 written ``\\xNN`` (and its backslashes doubled, so the text can be read back).
:func:`key_names` reads such a text back into the key or keys it may stand for.
"""

from __future__ import annotations

import re

__all__ = ["key_names", "key_text"]

_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def key_text(key: bytes | str) -> str:
    """``key`` as printable, valid UTF-8 text; the same key always gives the same text."""
    if isinstance(key, str):
        # a str that came from bytes with surrogateescape holds lone surrogates
        key = key.encode("utf-8", "surrogateescape")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def _unescape(match: re.Match[bytes]) -> bytes:
    escape = match.group(1)
    return b"\\" if escape == b"\\" else bytes.fromhex(escape[1:].decode("ascii"))


def key_names(text: str) -> tuple[bytes, ...]:
    """Every key that :func:`key_text` shows as ``text``, most likely first.

    Usually one: the UTF-8 bytes of ``text``. A text holding ``\\xNN`` escapes that undo
    to bytes that are not UTF-8 stands for those bytes, and also for its own UTF-8
    bytes (a UTF-8 key may itself hold a backslash followed by ``x`` and two digits).
    """
    raw = text.encode("utf-8", "surrogateescape")
    if b"\\" not in raw:
        return (raw,)
    undone = _ESCAPE.sub(_unescape, raw)
    try:
        undone.decode("utf-8")
    except UnicodeDecodeError:
        return (undone, raw)
    return (raw,)
