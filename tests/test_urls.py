"""Password redaction and URL checks (pure): a password never shows, whatever it holds."""

from __future__ import annotations

import pytest

from redismigrate.errors import BadInputError
from redismigrate.urls import check_url, redact_text, redact_url, url_password

# (url, how it is shown, every secret fragment that must not show)
CASES = [
    ("redis://:Pa55@word@host:6379", "redis://:***@host:6379", ["Pa55", "word"]),
    ("redis://user:p@ss@host", "redis://user:***@host", ["p@ss", "ss@"]),
    ("redis://user:p@ss@w0rd@host:1/0", "redis://user:***@host:1/0", ["p@ss", "w0rd"]),
    ("redis://u:pa:ss@h:6379", "redis://u:***@h:6379", ["pa:ss", ":ss"]),
    ("rediss://u:p%40ss@h?password=x&db=1", "rediss://u:***@h?password=***&db=1", ["p%40ss"]),
    ("redis://u:pa/ss@host:1/0", "redis://u:***@host:1/0", ["pa/ss", "/ss"]),
    ("redis://:pa?ss@host", "redis://:***@host", ["pa?ss", "?ss"]),
    ("redis://:pa#ss@host", "redis://:***@host", ["pa#ss", "#ss"]),
    ("redis://secret@host", "redis://***@host", ["secret"]),
    ("redis://:@host", "redis://:***@host", []),
    ("redis://h:1/0?password=s3cr3t", "redis://h:1/0?password=***", ["s3cr3t"]),
    ("redis://h:1/0?db=2&password=s3cr3t", "redis://h:1/0?db=2&password=***", ["s3cr3t"]),
    ("redis://h?PASSWORD=a1&password=b2", "redis://h?PASSWORD=***&password=***", ["a1", "b2"]),
    # an @ in a query password: the part after it is a secret too (more is hidden)
    ("redis://h:1/0?password=s3@cr/et&x=1", "redis://h:***&x=1", ["s3", "cr/et"]),
    ("unix://:pw@d@/tmp/redis.sock", "unix://:***@/tmp/redis.sock", ["pw@d"]),
    ("redis://host:6379/0", "redis://host:6379/0", []),
]


@pytest.mark.parametrize(("url", "shown", "secrets"), CASES)
def test_the_whole_password_is_redacted(url: str, shown: str, secrets: list[str]) -> None:
    assert redact_url(url) == shown
    for secret in secrets:
        assert secret not in redact_url(url)


@pytest.mark.parametrize(("url", "shown", "secrets"), CASES)
def test_urls_inside_text_are_redacted(url: str, shown: str, secrets: list[str]) -> None:
    text = f"cannot reach {url}: Error 111 connecting to host:6379. Connection refused."
    redacted = redact_url(text)
    assert redacted.startswith("cannot reach ")
    assert redacted.endswith("Error 111 connecting to host:6379. Connection refused.")
    for secret in secrets:
        assert secret not in redacted, redacted


def test_several_urls_in_one_text_each_lose_their_password() -> None:
    text = (
        "failed: redis://:a1@b2@h1:1, then redis://u:c3@d4@h2/0 and "
        "'rediss://:e5/f6@h3:7' and redis://h4?password=g7@h8&db=1"
    )
    redacted = redact_url(text)
    for secret in ("a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8"):
        assert secret not in redacted, redacted
    assert "redis://:***@h1:1," in redacted
    assert "redis://u:***@h2/0" in redacted
    assert "'rediss://:***@h3:7'" in redacted
    # two URLs with nothing between them are still two URLs
    assert redact_url("redis://:x1@h1redis://:y2@h2") == "redis://:***@h1redis://:***@h2"


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:Pa55@word@host:6379", "Pa55@word"),
        ("redis://user:p@ss@host", "p@ss"),
        ("redis://u:pa:ss@h", "pa:ss"),
        ("rediss://u:p%40ss@h?db=1", "p%40ss"),
        ("redis://secret@host", "secret"),
        ("redis://h:1/0?db=2&password=s3@cr/et", "s3@cr/et"),
        ("redis://u:pa/ss@host:1/0", "pa/ss"),
        ("redis://host:6379", None),
        ("not a url", None),
    ],
)
def test_url_password_finds_the_whole_password(url: str, password: str | None) -> None:
    assert url_password(url) == password


def test_redact_text_hides_the_password_also_percent_decoded() -> None:
    message = "AUTH p@ss failed; sent p%40ss"
    assert redact_text(message, "p%40ss") == "AUTH *** failed; sent ***"
    assert redact_text("x Pa55@word y", url_password("redis://:Pa55@word@h")) == "x *** y"


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:Zq7/Xw9@host:1/0",
        "redis://user:Zq7/Xw9@host",
        "redis://:Zq7?Xw9@host:6379",
        "redis://:Zq7#Xw9@host:6379",
        "redis://Zq7/Xw9@host",
        "redis://u:Zq7 Xw9@host",
    ],
)
def test_a_password_urlsplit_would_misread_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(BadInputError, match="malformed Redis URL") as info:
        check_url(url)
    message = str(info.value)
    assert "Zq7" not in message and "Xw9" not in message, message


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Pa55@word@host:6379",
        "redis://user:p@ss@host/0",
        "rediss://u:p%40ss@h?password=x&db=1",
        "redis://h:1/0?password=s3@cr/et",
        "unix://:pw@/tmp/redis.sock",
    ],
)
def test_a_raw_at_sign_in_a_password_is_accepted(url: str) -> None:
    assert check_url(url) == url
