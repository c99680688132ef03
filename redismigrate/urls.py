"""Redis URL checks and password redaction."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from redismigrate.errors import BadInputError

SUPPORTED_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
# a Redis Cluster named as such: the URL's host is any node of it (seed), reached as
# the plain scheme; a cluster is also recognised from a plain URL to one of its nodes
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
# a URL inside text runs from its scheme to the next whitespace or the next URL
_URL_IN_TEXT = re.compile(rf"(?P<scheme>{_SCHEME})(?P<rest>(?:(?!{_SCHEME})\S)*)")
_PASSWORD_VALUE = re.compile(r"(?i)[?&]password=([^&\s]*)")
# characters a password must not hold unescaped: urlsplit and redis-py end the host
# part there, so the URL would be read with the wrong host and port
_ENDS_AUTHORITY = ("/", "?", "#")


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``(userinfo, host_and_after)`` of a URL without its scheme.

    The userinfo ends at the LAST ``@``: a password may hold a raw ``@`` (and ``:``,
    ``/``, ``?``), a host never does. An ``@`` further on, in the path or query, makes
    more look like userinfo than is: more is hidden, never less.
    """
    at = rest.rfind("@")
    if at < 0:
        return None, rest
    return rest[:at], rest[at:]


def _secret_spans(rest: str) -> list[tuple[int, int]]:
    """Where the passwords are in a URL without its scheme, merged where they overlap.

    Both readings are hidden: the userinfo up to the last ``@`` (after its first ``:``,
    or all of it), and every ``password=`` query value up to the next ``&``. An ``@``
    inside a query password makes the first reading take too much: more is hidden,
    never less.
    """
    spans: list[tuple[int, int]] = []
    at = rest.rfind("@")
    if at >= 0:
        colon = rest.find(":", 0, at)
        spans.append((colon + 1 if colon >= 0 else 0, at))
    spans += [m.span(1) for m in _PASSWORD_VALUE.finditer(rest)]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _redact_one(scheme: str, rest: str) -> str:
    shown: list[str] = []
    done = 0
    for start, end in _secret_spans(rest):
        shown += [rest[done:start], "***"]
        done = end
    return scheme + "".join(shown) + rest[done:]


def redact_url(url: str) -> str:
    """Return ``url`` (or any text holding URLs) with every password replaced by ``***``.

    The whole password goes, whatever it holds (``@``, ``:``, ``/``, ``%40``): the
    userinfo of each URL runs to the last ``@`` before the next whitespace or URL, and a
    ``password=`` query parameter runs to the next ``&`` (see :func:`_secret_spans`).
    """
    return _URL_IN_TEXT.sub(lambda m: _redact_one(m.group("scheme"), m.group("rest")), url)


def redact_text(text: str, *secrets: str | None) -> str:
    """Redact URLs inside ``text`` and every literal secret given (also percent-decoded)."""
    text = redact_url(text)
    found: set[str] = set()
    for secret in secrets:
        if secret:
            found.update((secret, unquote(secret)))
    for secret in sorted(found, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def url_password(url: str) -> str | None:
    """The password inside ``url``, if any (used only to scrub error text).

    As redis-py reads the URL (urlsplit) when it can: the userinfo after its first ``:``
    (all of it when there is no ``:``), else a ``password=`` query parameter; else, as
    :func:`redact_url` reads it, the userinfo up to the last ``@``.
    """
    if "://" not in url:
        return None
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
    except ValueError:
        netloc, query = url.split("://", 1)[1], ""
    userinfo, after = _split_userinfo(netloc)
    if userinfo:
        return userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
    found = _PASSWORD_VALUE.search(f"?{query}" if query else after)
    if found is not None and found.group(1):
        return found.group(1)
    userinfo, _ = _split_userinfo(url.split("://", 1)[1])  # read as redact_url does
    if userinfo:
        return userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
    return None


def check_url(url: str) -> str:
    """Validate a Redis URL and return it unchanged; raise BadInputError naming the problem."""
    if not isinstance(url, str) or not url.strip():
        raise BadInputError("malformed Redis URL: it is empty")
    shown = redact_url("".join(url.split()))  # one URL: whitespace must not split it
    if any(c.isspace() for c in url):
        raise BadInputError(f"malformed Redis URL {shown!r}: it holds whitespace")
    if "://" not in url:
        raise BadInputError(
            f"malformed Redis URL {shown!r}: it needs a scheme, e.g. redis://localhost:6379"
        )
    # Where a '/', '?' or '#' comes before the last '@', urlsplit (and redis-py) end the
    # host part early: in a password that is unescaped, in a path or query it is fine.
    # A URL that then reads wrong is refused without quoting any part of it.
    userinfo, _ = _split_userinfo(url.split("://", 1)[1])
    ambiguous = userinfo is not None and any(c in userinfo for c in _ENDS_AUTHORITY)
    hint = (
        " (a '/', '?' or '#' in a user name or password must be percent-encoded: %2F, %3F, %23)"
        if ambiguous
        else ""
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        detail = "its port is not a number" if ambiguous else str(exc)
        raise BadInputError(f"malformed Redis URL {shown!r}: {detail}{hint}") from None
    if parts.scheme not in SUPPORTED_SCHEMES:
        raise BadInputError(
            f"malformed Redis URL {shown!r}: scheme {parts.scheme!r} is not one of "
            + ", ".join(SUPPORTED_SCHEMES)
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise BadInputError(
                f"malformed Redis URL {shown!r}: a unix URL needs a socket path{hint}"
            )
    elif not parts.hostname:
        raise BadInputError(f"malformed Redis URL {shown!r}: it has no host{hint}")
    if port is not None and not 0 < port < 65536:
        raise BadInputError(f"malformed Redis URL {shown!r}: port {port} is out of range")
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        what = "its database" if ambiguous else f"database {db!r}"
        raise BadInputError(f"malformed Redis URL {shown!r}: {what} is not a number{hint}")
    if parts.scheme in CLUSTER_SCHEMES and db not in ("", "0"):
        raise BadInputError(
            f"malformed Redis URL {shown!r}: a Redis Cluster has database 0 only, not {db}"
        )
    return url


def node_url(url: str) -> str:
    """``url`` with a cluster scheme (``redis+cluster://``) as the plain one its seed node
    is reached by; any other URL unchanged."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}{sep}{rest}" if plain is not None else url
