"""The throttle of a run that writes while the index serves, and `redismigrate throttle`.

A run calls ``await run.throttle.admit(n)`` before writing ``n`` documents. The
throttle waits as the max rate asks (redismigrate/throttle.py: a token bucket), picks
up a max rate `redismigrate throttle` stored in Redis (read at most once a second) and
samples the server's load (a PING round trip and INFO memory, at most every half
second) to back off while a limit is crossed. Between those reads a call costs no
round trip.
"""

from __future__ import annotations

import socket
import time

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio import online
from redismigrate.errors import BadInputError
from redismigrate.ledger import LockHolder, lock_key
from redismigrate.plan import now_iso
from redismigrate.throttle import (
    SETTING_SECONDS,
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

POLL_SECONDS = 1.0  # the stored max rate is read at most this often
SAMPLE_SECONDS = 0.5  # the load is sampled at most this often


class Throttle:
    """Admits a run's writes at ``max_rate`` documents a second (None: no limit), backs
    off while the server's load crosses ``limits``, and follows `redismigrate throttle`.

    The max rate stored for ``index_name`` applies when it changes during the run, or
    from the start when the run has no ``max_rate`` of its own (the newest word wins).
    Without a client nothing is read: the rate alone applies.
    """

    def __init__(
        self,
        client: aioredis.Redis | None,
        index_name: str,
        max_rate: float | None = None,
        limits: LoadLimits | None = None,
        *,
        poll_seconds: float = POLL_SECONDS,
        sample_seconds: float = SAMPLE_SECONDS,
    ) -> None:
        check_max_rate(max_rate)
        self.client = client
        self.index_name = index_name
        self.key = throttle_key(index_name)
        self.own_rate = max_rate
        self.max_rate = max_rate  # the operator's: own, or the stored one
        self.set_by = "--max-rate"
        self.policy = LoadPolicy(limits)
        self.poll_seconds = poll_seconds
        self.sample_seconds = sample_seconds
        now = time.monotonic()
        self.bucket = TokenBucket(max_rate, now=now)
        self.limited = max_rate is not None  # a max rate applied at some point
        self.changes = 0
        self.throttled_seconds = 0.0
        self.backoff_seconds = 0.0
        self.last_sample: LoadSample | None = None
        self._started = False
        self._baseline: bytes | None = None  # the stored value when the run started
        first = 0.0 if client is not None else float("inf")
        self._next_poll = self._next_sample = self._next_check = first
        self._checking = False
        self._polling = client is not None
        self._memory = True  # INFO memory allowed
        self._admitted = 0  # documents admitted since the last sample
        self._sampled_at = now
        self._waiting = 0  # callers waiting now
        self._mark = now  # since when the waiting time is not yet counted

    @property
    def limits(self) -> LoadLimits:
        return self.policy.limits

    @limits.setter
    def limits(self, limits: LoadLimits) -> None:
        self.policy.limits = limits

    @property
    def rate(self) -> float | None:
        """The rate in force now: the max rate, or lower while backing off."""
        return self.policy.rate(self.max_rate)

    async def start(self) -> None:
        """Note the stored max rate as the run starts (done by the first ``admit`` else)."""
        if self._started or self.client is None:
            return
        self._started = True
        raw = await self._read()
        self._baseline = raw
        if self.own_rate is None:
            self._apply(raw, time.monotonic())
        self._next_poll = time.monotonic() + self.poll_seconds
        self._next_check = min(self._next_poll, self._next_sample)

    async def admit(self, count: int) -> None:
        """Wait until ``count`` more documents may be written."""
        now = time.monotonic()
        if now >= self._next_check:
            await self._check(now)
            now = time.monotonic()
        self._admitted += count
        if self.bucket.rate is None:
            return
        ticket = self.bucket.reserve(count, now)
        wait = self.bucket.wait(ticket, now)
        if wait <= 0:
            return
        self._account(now)
        self._waiting += 1
        try:
            while wait > 0:
                await anyio.sleep(min(wait, self.sample_seconds))
                now = time.monotonic()
                if now >= self._next_check:
                    await self._check(now)
                    now = time.monotonic()
                wait = self.bucket.wait(ticket, now)
        finally:
            self._account(time.monotonic())
            self._waiting -= 1

    def report(self) -> ThrottleReport | None:
        """How the run was throttled; None when it had no max rate and never backed off."""
        if not self.limited and self.policy.backoffs == 0:
            return None
        self._account(time.monotonic())
        return ThrottleReport(
            max_rate=self.max_rate,
            final_rate=self.rate,
            set_by=self.set_by,
            throttled_seconds=round(self.throttled_seconds, 3),
            backoff_seconds=round(self.backoff_seconds, 3),
            backoffs=self.policy.backoffs,
            backoff_reason=self.policy.reason,
            changes=self.changes,
        )

    # ------------------------------------------------------------------ inside

    def _account(self, now: float) -> None:
        """Count the time callers waited since the last mark."""
        if self._waiting and now > self._mark:
            seconds = now - self._mark
            self.throttled_seconds += seconds
            if self.policy.backing_off:
                self.backoff_seconds += seconds
        self._mark = now

    async def _check(self, now: float) -> None:
        """Read the stored max rate and sample the load, each when due (one caller at a
        time; the others go on with what is known)."""
        if self._checking or self.client is None:
            return
        self._checking = True
        try:
            if not self._started:
                await self.start()
            elif self._polling and now >= self._next_poll:
                self._apply(await self._read(), now)
                self._next_poll = time.monotonic() + self.poll_seconds
            if now >= self._next_sample:
                await self._sample()
                self._next_sample = time.monotonic() + self.sample_seconds
        finally:
            self._checking = False
            self._next_check = min(
                self._next_poll if self._polling else float("inf"), self._next_sample
            )

    async def _read(self) -> bytes | None:
        assert self.client is not None
        try:
            raw = await self.client.get(self.key)
        except rexc.ResponseError:  # not allowed (ACL): the run's own rate only
            self._polling = False
            return None
        return raw if isinstance(raw, bytes) or raw is None else str(raw).encode()

    def _apply(self, raw: bytes | None, now: float) -> None:
        """Follow the stored max rate, unless it is the one found at the start of a run
        that has its own."""
        if self.own_rate is not None and raw == self._baseline:
            return
        setting = ThrottleSetting.decode(raw)
        if setting is None:
            rate, by = self.own_rate, "--max-rate"  # gone (or unreadable): the run's own
        else:
            rate, by = setting.max_rate, setting.describe()
        if rate == self.max_rate and by == self.set_by:
            return
        if setting is not None:
            self.changes += 1
        self._account(now)
        self.max_rate, self.set_by = rate, by
        self.limited = self.limited or rate is not None
        self.bucket.set_rate(self.rate, now)

    async def _sample(self) -> None:
        assert self.client is not None
        started = time.perf_counter()
        await self.client.ping()
        ping_ms = (time.perf_counter() - started) * 1000
        used = maxmemory = system = None
        if self._memory:
            try:
                info = await self.client.info("memory")
                used = int(info["used_memory"])
                maxmemory = int(info.get("maxmemory", 0))
                system = int(info.get("total_system_memory", 0))
            except rexc.ResponseError:  # not allowed (ACL): PING only
                self._memory = False
            except (KeyError, ValueError):
                pass
        sample = LoadSample(
            ping_ms=ping_ms, used_memory=used, maxmemory=maxmemory, total_system_memory=system
        )
        now = time.monotonic()
        elapsed = now - self._sampled_at
        measured = self._admitted / elapsed if self._admitted and elapsed > 0 else None
        self._admitted, self._sampled_at = 0, now
        self._account(now)
        self.last_sample = sample
        self.policy.update(sample, self.max_rate, measured)
        self.bucket.set_rate(self.rate, now)


async def set_max_rate(client: aioredis.Redis, index_name: str, rate: float | None) -> str:
    """Set the max rate (documents a second; None: no limit) of the runs on
    ``index_name``, running or to come; returns what will happen, in one sentence.
    BadInputError when the rate is not positive or no index or alias has that name."""
    check_max_rate(rate)
    if await online.physical_name(client, index_name) is None:
        raise BadInputError(f"no index or alias named {index_name!r}")
    holder = LockHolder.decode(await client.get(lock_key(index_name)))
    setting = ThrottleSetting(max_rate=rate, set_at=now_iso(), host=socket.gethostname())
    await client.set(throttle_key(index_name), setting.encode(), ex=SETTING_SECONDS)
    what = f"max rate of {index_name!r} set to {rate_text(rate)}"
    if holder is None:
        days = SETTING_SECONDS // 86400
        return (
            f"{what}; no run holds its lock now: the next apply of it without --max-rate "
            f"uses it (kept {days} days)"
        )
    return f"{what}: the run of {holder.describe()} follows it within about a second"
