"""The throttle against the real server (redismigrate/aio/throttle.py): the rate it
admits at, `redismigrate throttle` changing a running one, the load guard backing off
and recovering, bad input, one index's setting not reaching another, and the report."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.throttle import Throttle, set_max_rate
from redismigrate.demo import sample_schema
from redismigrate.errors import BadInputError
from redismigrate.ledger import LockHolder, lock_key
from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.sync import MigrationPlanner
from redismigrate.throttle import LoadLimits, ThrottleSetting, throttle_key
from tests.test_cli import assert_one_line_error, cli

NO_LOAD_LIMITS = LoadLimits(ping_ms=None, memory_fraction=None)  # the rate alone


@pytest.fixture
def index(sync_client: redis.Redis, ns: str) -> Iterator[str]:
    """A small index (its throttle and lock keys removed after the test)."""
    name = f"{ns}_idx"
    schema = sample_schema(name=name, dims=4, prefix=f"{ns}:")
    sync_client.execute_command(*ft_create_args(schema))
    vector = np.ones(4, dtype=np.float32).tobytes()
    pipe = sync_client.pipeline(transaction=False)
    for i in range(20):
        pipe.hset(
            f"{ns}:{i}", mapping={"title": "t", "category": "a", "price": i, "embedding": vector}
        )
    pipe.execute()
    yield name
    sync_client.delete(throttle_key(name), lock_key(name))


def stored(client: redis.Redis, name: str) -> ThrottleSetting | None:
    return ThrottleSetting.decode(client.get(throttle_key(name)))


# --------------------------------------------------------------------------- the rate


async def test_a_throttle_at_rate_r_admits_n_documents_in_no_less_than_n_over_r(
    aclient: aioredis.Redis, index: str
) -> None:
    rate, total, batch = 2000.0, 4000, 100
    throttle = Throttle(aclient, index, rate, NO_LOAD_LIMITS)
    await throttle.start()
    started = time.monotonic()

    async def writer(count: int) -> None:
        for _ in range(count // batch):
            await throttle.admit(batch)

    async with anyio.create_task_group() as group:  # four writers, as a run's workers
        for _ in range(4):
            group.start_soon(writer, total // 4)
    elapsed = time.monotonic() - started
    assert total / rate <= elapsed < total / rate + 1.5, elapsed
    report = throttle.report()
    assert report is not None
    assert report.max_rate == report.final_rate == rate and report.set_by == "--max-rate"
    assert total / rate - 0.2 <= report.throttled_seconds <= elapsed + 0.01
    assert report.backoffs == 0 and report.backoff_seconds == 0 and report.changes == 0


async def test_an_unlimited_throttle_costs_no_round_trip_per_call(
    aclient: aioredis.Redis, index: str
) -> None:
    async def calls() -> int:
        """Commands the throttle may send, as the server counted them so far."""
        stats = await aclient.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("ping", "get", "info")
        )

    throttle = Throttle(aclient, index)  # no max rate, the default load guard
    await throttle.admit(1)  # the first call reads the setting and samples the load
    before = await calls()
    started = time.monotonic()
    admitted = 0
    while time.monotonic() - started < 1.2:  # long enough for its own samples and reads
        for _ in range(10_000):
            await throttle.admit(1)
        admitted += 10_000
    elapsed = time.monotonic() - started
    sent = await calls() - before - 1  # (the INFO that counted)
    # a sample (PING, INFO) each half second and a read each second, not one a call
    assert 1 <= sent <= 3 * (elapsed / 0.5 + 1), (sent, elapsed)
    assert elapsed / admitted < 50e-6, elapsed  # microseconds a call
    assert throttle.report() is None  # no max rate, no back-off: nothing to report
    print(
        f"\nunlimited: {admitted:,} calls, {elapsed / admitted * 1e6:.2f} us a call, "
        f"{sent} commands sent in {elapsed:.2f} s"
    )


# --------------------------------------------------------------------------- the operator


async def test_redismigrate_throttle_changes_a_running_throttle_within_two_seconds(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, index: str
) -> None:
    throttle = Throttle(aclient, index, 100_000, NO_LOAD_LIMITS)
    await throttle.start()
    writing = True

    async def writer() -> None:
        while writing:
            await throttle.admit(5)
            await anyio.sleep(0.005)

    async def until(rate: float | None) -> float:
        """Seconds until the running throttle follows ``rate``."""
        since = time.monotonic()
        while throttle.max_rate != rate or throttle.rate != rate:
            assert time.monotonic() - since < 2.0, (throttle.max_rate, rate)
            await anyio.sleep(0.02)
        return time.monotonic() - since

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        asked = time.monotonic()
        result = await anyio.to_thread.run_sync(
            lambda: cli("throttle", "--index", index, "--max-rate", "50", "--url", redis_url)
        )
        assert result.returncode == 0, result.stderr
        assert f"max rate of {index!r} set to 50 documents a second" in result.stdout
        assert "no run holds its lock now" in result.stdout
        setting = stored(sync_client, index)
        assert setting is not None and setting.max_rate == 50
        assert 0 < sync_client.ttl(throttle_key(index)) <= 3 * 24 * 3600
        command = time.monotonic() - asked
        took = await until(50)
        writing = False
    # at 50 a second (a burst of 0.1 s of it at most), 25 documents take about half a second
    started = time.monotonic()
    await throttle.admit(25)
    assert time.monotonic() - started >= (25 - 5) / 50 - 0.01

    result = await anyio.to_thread.run_sync(
        lambda: cli("throttle", "--index", index, "--unlimited", "--url", redis_url)
    )
    assert result.returncode == 0, result.stderr
    assert "set to no limit" in result.stdout
    since = time.monotonic()
    while throttle.max_rate is not None:
        await throttle.admit(1)
        assert time.monotonic() - since < 2.0
        await anyio.sleep(0.02)
    started = time.monotonic()
    await throttle.admit(1_000_000)
    assert time.monotonic() - started < 0.1
    report = throttle.report()
    assert report is not None and report.max_rate is None and report.changes == 2
    assert report.set_by.startswith("redismigrate throttle on host ")
    print(
        f"\n`redismigrate throttle` took {command:.2f} s; the running throttle followed it "
        f"{took:.2f} s after it returned"
    )


async def test_the_newest_word_wins(aclient: aioredis.Redis, index: str) -> None:
    """A setting stored before a run with its own max rate started is not applied; one
    stored later is; a run without a max rate starts with the stored one."""
    await set_max_rate(aclient, index, 10)
    own = Throttle(aclient, index, 3000, NO_LOAD_LIMITS, poll_seconds=0.05)
    none = Throttle(aclient, index, None, NO_LOAD_LIMITS, poll_seconds=0.05)
    await own.start()
    await none.start()
    assert own.max_rate == 3000 and none.max_rate == 10
    await set_max_rate(aclient, index, 700)
    for _ in range(20):
        await anyio.sleep(0.06)
        await own.admit(1)
        await none.admit(1)
        if own.max_rate == none.max_rate == 700:
            break
    assert own.max_rate == none.max_rate == 700
    # the key gone (expired): back to the run's own
    await aclient.delete(throttle_key(index))
    await anyio.sleep(0.06)
    await own.admit(1)
    await none.admit(1)
    assert own.max_rate == 3000 and none.max_rate is None


async def test_the_sentence_names_the_run_holding_the_lock(
    aclient: aioredis.Redis, index: str
) -> None:
    holder = LockHolder.here("apply")
    await aclient.set(lock_key(index), holder.encode())
    said = await set_max_rate(aclient, index, 1234.5)
    assert said == (
        f"max rate of {index!r} set to 1,234.5 documents a second: the run of "
        f"{holder.describe()} follows it within about a second"
    )


async def test_one_index_setting_does_not_reach_another(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, index: str
) -> None:
    other = f"{ns}_other"
    sync_client.execute_command(
        *ft_create_args(sample_schema(name=other, dims=4, prefix=f"{ns}o:"))
    )
    alias = f"{ns}_alias"
    sync_client.execute_command("FT.ALIASADD", alias, index)
    try:
        first = Throttle(aclient, index, None, NO_LOAD_LIMITS, poll_seconds=0.05)
        second = Throttle(aclient, other, 800, NO_LOAD_LIMITS, poll_seconds=0.05)
        await first.start()
        await second.start()
        await set_max_rate(aclient, index, 100)
        await set_max_rate(aclient, alias, 5)  # an alias is a name too: its own key
        for _ in range(10):
            await anyio.sleep(0.06)
            await first.admit(1)
            await second.admit(1)
        assert first.max_rate == 100
        assert second.max_rate == 800 and second.changes == 0
        assert stored(sync_client, other) is None
        assert stored(sync_client, alias) is not None
    finally:
        sync_client.execute_command("FT.ALIASDEL", alias)
        sync_client.delete(throttle_key(other), throttle_key(alias))


# --------------------------------------------------------------------------- the load guard


@pytest.mark.parametrize(
    ("over", "under", "reason"),
    [
        (LoadLimits(ping_ms=None, memory_fraction=1e-9), LoadLimits(ping_ms=None), "used_memory"),
        (LoadLimits(ping_ms=1e-6, memory_fraction=None), LoadLimits(ping_ms=10_000), "PING took"),
    ],
    ids=["memory", "ping"],
)
async def test_the_load_guard_backs_off_over_a_limit_and_recovers_under_it(
    aclient: aioredis.Redis, index: str, over: LoadLimits, under: LoadLimits, reason: str
) -> None:
    rate = 5000.0
    throttle = Throttle(aclient, index, rate, over, sample_seconds=0.05)
    since = time.monotonic()
    while throttle.policy.backoffs < 3:
        await throttle.admit(50)
        assert time.monotonic() - since < 3
    assert throttle.rate is not None and throttle.rate <= rate / 8
    assert throttle.last_sample is not None
    if reason == "used_memory":
        assert throttle.last_sample.used_memory and throttle.last_sample.memory_fraction
    assert throttle.policy.reason is not None and throttle.policy.reason.startswith(reason)
    throttle.limits = under
    since = time.monotonic()
    while throttle.rate != rate:
        await throttle.admit(50)
        assert time.monotonic() - since < 5, throttle.rate
    recovered = time.monotonic() - since
    report = throttle.report()
    assert report is not None and report.final_rate == rate and report.backoffs >= 3
    assert report.backoff_reason is not None and report.backoff_reason.startswith(reason)
    assert 0 < report.backoff_seconds <= report.throttled_seconds
    print(f"\nbacked off {report.backoffs} times ({reason}), recovered in {recovered:.2f} s")


# --------------------------------------------------------------------------- bad input


def test_bad_input_to_throttle_is_one_line_exit_2_and_touches_nothing(
    sync_client: redis.Redis, redis_url: str, index: str
) -> None:
    u = ("--url", redis_url)
    cases = [
        (("--index", f"{index}_nope", "--max-rate", "5", *u), "no index or alias named"),
        (("--index", index, "--max-rate", "0", *u), "positive number"),
        (("--index", index, "--max-rate", "-5", *u), "positive number"),
        (("--index", index, "--max-rate", "nan", *u), "positive number"),
        (("--index", index, *u), "exactly one of --max-rate N or --unlimited"),
        (("--index", index, "--max-rate", "5", "--unlimited", *u), "exactly one"),
        (("--index", index, "--max-rate", "fast", *u), "--max-rate"),
        (("--max-rate", "5", *u), "--index"),
        (("--index", index, "--max-rate", "5", "--url", "redis://h:99999"), "Port"),
    ]

    def one(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return cli("throttle", *args)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, [args for args, _ in cases]))
    for (_, needle), result in zip(cases, results, strict=True):
        assert_one_line_error(result, 2, needle)
    assert sync_client.exists(throttle_key(index), throttle_key(f"{index}_nope")) == 0


async def test_the_library_refuses_a_bad_rate_before_connecting(tmp_path: Path) -> None:
    executor = AsyncMigrationExecutor()
    with pytest.raises(BadInputError, match="positive number"):
        await executor.set_max_rate("x", 0, redis_url="redis://127.0.0.1:1")
    with pytest.raises(BadInputError, match="positive number"):
        Throttle(None, "x", -1)


# --------------------------------------------------------------------------- the report


def test_apply_with_a_max_rate_reports_the_throttle(
    sync_client: redis.Redis, redis_url: str, index: str, tmp_path: Path
) -> None:
    patch = SchemaPatch.from_dict({"changes": {"add_fields": [{"name": "brand", "type": "tag"}]}})
    plan = MigrationPlanner().create_plan(index, redis_url=redis_url, schema_patch=patch)
    plan_path = tmp_path / "plan.yaml"
    plan.dump(plan_path)
    # a rate that is not positive: refused before anything, not even the backup dir made
    refused = cli(
        "apply", "--plan", str(plan_path), "--backup-dir", str(tmp_path / "never"),
        "--url", redis_url, "--max-rate", "0",
    )  # fmt: skip
    assert_one_line_error(refused, 2, "positive number")
    assert not (tmp_path / "never").exists()

    done = cli(
        "apply", "--plan", str(plan_path), "--backup-dir", str(tmp_path / "b"),
        "--url", redis_url, "--max-rate", "1000", "--report-out", str(tmp_path / "r.yaml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Throttle: max rate 1,000 documents a second (--max-rate); waited 0.00 s" in done.stdout
    report = MigrationReport.load(tmp_path / "r.yaml")
    assert report.throttle is not None
    assert report.throttle.max_rate == report.throttle.final_rate == 1000
    assert report.throttle.backoffs == 0
