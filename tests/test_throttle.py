"""The throttle's pure parts (redismigrate/throttle.py): the token bucket on a clock the
test moves, the load policy on made-up samples, the stored setting. No Redis."""

from __future__ import annotations

import math

import msgspec
import pytest

from redismigrate.errors import BadInputError
from redismigrate.report import MigrationReport
from redismigrate.throttle import (
    MIN_RATE,
    LoadLimits,
    LoadPolicy,
    LoadSample,
    ThrottleReport,
    ThrottleSetting,
    TokenBucket,
    check_max_rate,
    rate_text,
    throttle_key,
)

# --------------------------------------------------------------------------- the bucket


def admit_all(bucket: TokenBucket, batches: list[int], now: float = 0.0) -> float:
    """Admit the batches one after another, each waiting as told; returns the clock at
    the end."""
    for count in batches:
        ticket = bucket.reserve(count, now)
        now += bucket.wait(ticket, now)
        assert bucket.wait(ticket, now) == 0.0
    return now


def test_n_documents_take_at_least_n_over_rate() -> None:
    bucket = TokenBucket(5000, now=0.0)
    end = admit_all(bucket, [500] * 20)
    assert end == pytest.approx(10_000 / 5000)


def test_the_bucket_starts_empty_and_its_burst_is_small() -> None:
    bucket = TokenBucket(1000, now=0.0, burst_seconds=0.1)
    assert bucket.wait(bucket.reserve(1, 0.0), 0.0) == pytest.approx(0.001)
    # idle for a long time: it holds only 0.1 s of the rate, not the whole idle time
    later = 100.0
    assert bucket.wait(bucket.reserve(100, later), later) == 0.0
    assert bucket.wait(bucket.reserve(100, later), later) == pytest.approx(0.1)


def test_idle_time_before_the_first_reservation_adds_nothing() -> None:
    bucket = TokenBucket(1000, now=0.0)
    assert bucket.wait(bucket.reserve(100, 50.0), 50.0) == pytest.approx(0.1)


def test_a_lower_rate_keeps_no_burst_of_the_higher_one() -> None:
    bucket = TokenBucket(100_000, now=0.0)
    bucket.reserve(1, 0.0)
    bucket.set_rate(50, 10.0)  # a full bucket at 100,000 a second: 10,000 documents
    assert bucket.wait(bucket.reserve(25, 10.0), 10.0) == pytest.approx(20 / 50)


def test_tickets_are_served_in_order() -> None:
    bucket = TokenBucket(100, now=0.0)
    first = bucket.reserve(50, 0.0)
    second = bucket.reserve(50, 0.0)
    assert bucket.wait(first, 0.0) == pytest.approx(0.5)
    assert bucket.wait(second, 0.0) == pytest.approx(1.0)
    assert bucket.wait(first, 0.5) == 0.0
    assert bucket.wait(second, 0.5) == pytest.approx(0.5)


def test_a_rate_changed_while_waiting_applies_to_what_is_still_owed() -> None:
    bucket = TokenBucket(100, now=0.0)
    ticket = bucket.reserve(100, 0.0)  # 1 s at 100/s
    assert bucket.wait(ticket, 0.5) == pytest.approx(0.5)  # half paid
    bucket.set_rate(1000, 0.5)  # the other half at 1000/s
    assert bucket.wait(ticket, 0.5) == pytest.approx(0.05)
    bucket.set_rate(10, 0.5)
    assert bucket.wait(ticket, 0.5) == pytest.approx(5.0)


def test_no_limit_admits_at_once_and_forgives_what_was_owed() -> None:
    bucket = TokenBucket(None, now=0.0)
    assert admit_all(bucket, [10_000] * 5) == 0.0
    bucket.set_rate(10, 0.0)
    ticket = bucket.reserve(100, 0.0)  # a limit starts empty: 10 s
    assert bucket.wait(ticket, 0.0) == pytest.approx(10.0)
    bucket.set_rate(None, 1.0)
    assert bucket.wait(ticket, 1.0) == 0.0
    assert bucket.wait(bucket.reserve(1_000_000, 1.0), 1.0) == 0.0


def test_a_clock_going_backwards_takes_nothing_and_gives_nothing() -> None:
    bucket = TokenBucket(100, now=10.0)
    ticket = bucket.reserve(100, 10.0)
    assert bucket.wait(ticket, 9.0) == pytest.approx(1.0)  # not 2 s, not 0
    assert bucket.wait(ticket, 11.0) == 0.0


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf, -math.inf])
def test_a_rate_that_is_not_positive_and_finite_is_refused(rate: float) -> None:
    with pytest.raises(BadInputError, match="positive number"):
        check_max_rate(rate)
    with pytest.raises(BadInputError):
        TokenBucket(rate, now=0.0)
    bucket = TokenBucket(None, now=0.0)
    with pytest.raises(BadInputError):
        bucket.set_rate(rate, 0.0)


def test_rates_in_words() -> None:
    check_max_rate(None)
    check_max_rate(0.5)
    assert rate_text(None) == "no limit"
    assert rate_text(5000) == "5,000 documents a second"
    assert rate_text(2.5) == "2.5 documents a second"


# --------------------------------------------------------------------------- the load


def fast(**changes: object) -> LoadSample:
    """A sample under the default limits unless ``changes`` say otherwise."""
    values: dict[str, object] = {"ping_ms": 0.3, "used_memory": 100, "maxmemory": 1000}
    return LoadSample(**{**values, **changes})


def test_samples_against_the_limits() -> None:
    limits = LoadLimits(ping_ms=20, memory_fraction=0.5)
    assert fast().over(limits) is None
    assert fast(ping_ms=25).over(limits) == "PING took 25.0 ms (limit 20 ms)"
    said = fast(used_memory=600).over(limits)
    assert said == "used_memory is 60.0% of maxmemory (limit 50%)"
    # no maxmemory: the machine's memory
    machine = fast(used_memory=600, maxmemory=0, total_system_memory=2000)
    assert machine.memory_fraction == pytest.approx(0.3)
    assert machine.over(LoadLimits(memory_fraction=0.2)) == (
        "used_memory is 30.0% of the machine's memory (limit 20%)"
    )
    # what was not measured, or a check that is off, never crosses
    assert LoadSample().over(limits) is None
    assert fast(used_memory=None).memory_fraction is None
    assert fast(maxmemory=0).memory_fraction is None
    off = LoadLimits(ping_ms=None, memory_fraction=None)
    assert fast(ping_ms=10_000, used_memory=999).over(off) is None


@pytest.mark.parametrize(
    "limits",
    [
        {"ping_ms": 0},
        {"ping_ms": -1},
        {"ping_ms": math.nan},
        {"memory_fraction": 0},
        {"memory_fraction": 1.5},
    ],
)
def test_limits_out_of_range_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(BadInputError, match="limit"):
        LoadLimits(**limits)


def test_over_a_limit_the_rate_halves_down_to_a_floor_then_recovers_additively() -> None:
    policy = LoadPolicy(LoadLimits(ping_ms=10))
    slow = fast(ping_ms=50)
    assert policy.rate(5000) == 5000 and not policy.backing_off
    # one sample over the limit may be a blip: two in a row start the back-off
    for sample in (slow, fast(), slow):
        assert policy.update(sample, 5000) is None
    assert policy.rate(5000) == 5000 and policy.backoffs == 0
    rates = []
    for _ in range(8):
        policy.update(slow, 5000)
        rates.append(policy.rate(5000))
    assert rates[:3] == [2500, 1250, 625]
    assert min(rates) == rates[-1] == 250  # 5% of 5000: the floor, never 0
    assert policy.backoffs == 8 and policy.reason == "PING took 50.0 ms (limit 10 ms)"
    recovered = []
    while policy.backing_off:
        policy.update(fast(), 5000)
        recovered.append(policy.rate(5000))
    # a tenth of 5000 back per sample under the limits, then the max rate again
    assert recovered[:3] == [750, 1250, 1750]
    assert recovered[-1] == 5000 and len(recovered) == 10
    assert policy.backoffs == 8  # recovering is no back-off


def test_without_a_max_rate_it_backs_off_from_the_rate_measured() -> None:
    policy = LoadPolicy(LoadLimits(memory_fraction=0.5), patience=1)
    over = fast(used_memory=900)
    assert policy.update(fast(), None, 20_000) is None
    assert policy.rate(None) is None
    assert policy.update(over, None, 20_000) == 10_000
    assert policy.update(over, None, 10_000) == 5000  # from its own cap, not the measure
    while policy.backing_off:
        policy.update(fast(), None)
    assert policy.rate(None) is None
    # nothing measured: it starts from a modest rate
    assert policy.update(over, None, None) == 500


def test_the_cap_never_lifts_the_max_rate_and_the_floor_never_exceeds_it() -> None:
    policy = LoadPolicy(LoadLimits(ping_ms=1), patience=1)
    policy.update(fast(ping_ms=5), 100_000, 8000)  # going at 8,000: backs off from that
    assert policy.rate(100_000) == 4000
    assert policy.rate(3000) == 3000  # the operator lowered the max rate meanwhile
    tiny = LoadPolicy(LoadLimits(ping_ms=1))
    for _ in range(20):
        tiny.update(fast(ping_ms=5), 4)
    assert MIN_RATE > 4
    assert tiny.rate(4) == 4  # the floor is MIN_RATE, but never above the max rate


# --------------------------------------------------------------------------- stored


def test_the_setting_round_trips_with_its_version() -> None:
    setting = ThrottleSetting(max_rate=5000.0, set_at="2025-01-01T00:00:00+00:00", host="ops-1")
    raw = setting.encode()
    assert msgspec.json.decode(raw) == {
        "version": 1,
        "max_rate": 5000.0,
        "set_at": "2025-01-01T00:00:00+00:00",
        "host": "ops-1",
    }
    assert ThrottleSetting.decode(raw) == setting
    assert ThrottleSetting.decode(raw.decode()) == setting
    unlimited = ThrottleSetting(max_rate=None, set_at="t", host="h")
    assert ThrottleSetting.decode(unlimited.encode()) == unlimited
    assert setting.describe() == "redismigrate throttle on host ops-1 at 2025-01-01T00:00:00+00:00"
    assert throttle_key("products") == "redismigrate:throttle:products"


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"5000",
        b"not json",
        b'{"version": 2, "max_rate": 1, "set_at": "t", "host": "h"}',
        b'{"version": 1, "max_rate": 1, "set_at": "t", "host": "h", "extra": 1}',
        b'{"version": 1, "max_rate": -5, "set_at": "t", "host": "h"}',
        b'{"version": 1, "max_rate": 1, "set_at": "t"}',
    ],
)
def test_a_value_that_is_not_a_valid_setting_reads_as_none(raw: bytes | None) -> None:
    assert ThrottleSetting.decode(raw) is None


def test_settings_are_frozen() -> None:
    setting = ThrottleSetting(max_rate=1.0, set_at="t", host="h")
    with pytest.raises(AttributeError):
        setting.max_rate = 2.0  # type: ignore[misc]


# --------------------------------------------------------------------------- the report


def test_a_report_without_throttle_still_decodes_and_one_with_it_round_trips() -> None:
    base = {
        "version": 1,
        "result": "succeeded",
        "source_index": "a",
        "target_index": "a",
        "plan_hash": "x",
        "started_at": "s",
        "finished_at": "f",
    }
    old = MigrationReport.from_dict(base)
    assert old.throttle is None
    assert "throttle" not in old.to_dict()
    throttled = msgspec.structs.replace(
        old,
        throttle=ThrottleReport(
            max_rate=5000.0,
            final_rate=2500.0,
            throttled_seconds=4.5,
            backoff_seconds=1.0,
            backoffs=2,
            backoff_reason="PING took 80.0 ms (limit 50 ms)",
        ),
    )
    again = MigrationReport.from_dict(throttled.to_dict())
    assert again.throttle == throttled.throttle
