"""Redis URL checks and password redaction."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from redismigrate.errors import BadInputError

SUPPORTED_SCHEMES = ("redis", "rediss", "unix")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]*)@")
_PASSWORD_QUERY = re.compile(r"(?i)([?&]password=)[^&\s]*")


def _hide_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group("userinfo")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    elif userinfo:
        # redis://secret@host: a lone userinfo is the password
        userinfo = "***"
    return f"{match.group('scheme')}{userinfo}@"


def redact_url(url: str) -> str:
    """Return ``url`` (or any text holding URLs) with every password replaced by ``***``."""
    return _PASSWORD_QUERY.sub(r"\1***", _USERINFO.sub(_hide_userinfo, url))


def redact_text(text: str, *secrets: str | None) -> str:
    """Redact URLs inside ``text`` and every literal secret given."""
    text = redact_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_password(url: str) -> str | None:
    """The password inside ``url``, if any (used only to scrub error text)."""
    try:
        parts = urlsplit(url)
        password = parts.password
        if password is None and parts.username and "@" in url.split("://", 1)[-1]:
            userinfo = url.split("://", 1)[-1].split("@", 1)[0]
            if ":" not in userinfo:
                return userinfo
        return password
    except ValueError:
        return None


def check_url(url: str) -> str:
    """Validate a Redis URL and return it unchanged; raise BadInputError naming the problem."""
    if not isinstance(url, str) or not url.strip():
        raise BadInputError("malformed Redis URL: it is empty")
    shown = redact_url(url)
    if "://" not in url:
        raise BadInputError(
            f"malformed Redis URL {shown!r}: it needs a scheme, e.g. redis://localhost:6379"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInputError(f"malformed Redis URL {shown!r}: {exc}") from None
    if parts.scheme not in SUPPORTED_SCHEMES:
        raise BadInputError(
            f"malformed Redis URL {shown!r}: scheme {parts.scheme!r} is not one of "
            + ", ".join(SUPPORTED_SCHEMES)
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise BadInputError(f"malformed Redis URL {shown!r}: a unix URL needs a socket path")
    elif not parts.hostname:
        raise BadInputError(f"malformed Redis URL {shown!r}: it has no host")
    if port is not None and not 0 < port < 65536:
        raise BadInputError(f"malformed Redis URL {shown!r}: port {port} is out of range")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise BadInputError(f"malformed Redis URL {shown!r}: database {db!r} is not a number")
    return url
