"""The throttle and load guard of a run that writes while the index serves: pure code.

Three parts, each driven by values passed in (the clock included), none doing I/O:

- :class:`TokenBucket`: admits documents at a rate (documents a second) with a small
  burst; it starts empty, so ``N`` documents take at least ``N / rate`` seconds.
- :class:`LoadPolicy`: reads one :class:`LoadSample` of the server at a time (PING round
  trip, used memory) against :class:`LoadLimits`; over a limit (two samples in a row)
  it halves the rate per sample (multiplicative decrease), once under it adds a tenth
  back per sample (additive recovery) up to the operator's rate; a floor keeps the run
  moving.
- :class:`ThrottleSetting`: what `redismigrate throttle --index NAME --max-rate N` stores
  in Redis (``throttle_key(NAME)``) for a running migration of NAME to pick up.

aio/throttle.py puts them together around a client.
"""

from __future__ import annotations

import math

import msgspec

from redismigrate.errors import BadInputError
from redismigrate.schema import Model

THROTTLE_KEY_PREFIX = "redismigrate:throttle:"
SETTING_SECONDS = 3 * 24 * 3600  # how long a `redismigrate throttle` setting is kept
BURST_SECONDS = 0.1  # the bucket holds at most this much of the rate
DEFAULT_PING_MS = 100.0
DEFAULT_MEMORY_FRACTION = 0.9
PATIENCE = 2  # samples in a row over a limit before the first cut (one PING is noisy)
DECREASE = 0.5  # the rate is multiplied by this for each sample over a limit
RECOVERY = 0.1  # ... and this fraction of the rate it backed off from added back under it
FLOOR_FRACTION = 0.05  # never below this fraction of the rate it backed off from
MIN_RATE = 10.0  # documents a second: the lowest floor
START_RATE = 1000.0  # backing off from no limit with nothing measured yet: start here


def throttle_key(index_name: str) -> str:
    """The Redis key holding the live max rate of the runs on ``index_name``."""
    return THROTTLE_KEY_PREFIX + index_name


def check_max_rate(rate: float | None) -> None:
    """BadInputError unless ``rate`` is None (no limit) or a positive, finite number."""
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise BadInputError(
            f"the max rate must be a positive number of documents a second, not {rate:g}"
        )


def rate_text(rate: float | None) -> str:
    return "no limit" if rate is None else f"{rate:,.6g} documents a second"


# --------------------------------------------------------------------------- the rate


class TokenBucket:
    """Admits documents at ``rate`` a second (None: no limit), ``burst_seconds`` of it at once.

    A caller reserves its documents (:meth:`reserve` returns a ticket, served in the
    order taken) and waits until :meth:`wait` says 0; a rate changed meanwhile applies
    to what is still owed. The bucket starts empty at its first reservation and never
    holds more than ``burst_seconds`` of the rate: what it admitted from then to ``now``
    never exceeds ``rate * (now - first)``.
    """

    def __init__(
        self, rate: float | None, *, now: float, burst_seconds: float = BURST_SECONDS
    ) -> None:
        check_max_rate(rate)
        self.rate = rate
        self.burst_seconds = burst_seconds
        self.tokens = 0.0  # negative: owed to tickets not yet served
        self.credited = 0.0  # tokens ever added: a ticket is served once this reaches it
        self.last = now
        self.used = False  # nothing reserved yet: idle time adds nothing

    def _refill(self, now: float) -> None:
        if self.rate is not None and self.used and now > self.last:
            room = self.rate * self.burst_seconds - self.tokens
            added = min(self.rate * (now - self.last), max(room, 0.0))
            self.tokens += added
            self.credited += added
        self.last = max(self.last, now)

    def set_rate(self, rate: float | None, now: float) -> None:
        """From ``now`` on, admit at ``rate`` (None: at once, debts forgiven)."""
        check_max_rate(rate)
        self._refill(now)
        if rate is None:
            self.credited -= min(self.tokens, 0.0)  # every ticket served
            self.tokens = 0.0
        elif self.rate is None:
            self.tokens = 0.0  # a limit starts with an empty bucket
        else:
            self.tokens = min(self.tokens, rate * self.burst_seconds)  # the new burst
        self.rate = rate

    def reserve(self, count: int, now: float) -> float:
        """Take ``count`` documents; returns the ticket to pass to :meth:`wait`."""
        self._refill(now)
        self.used = True
        if self.rate is None:
            return self.credited
        self.tokens -= count
        return self.credited - min(self.tokens, 0.0)

    def wait(self, ticket: float, now: float) -> float:
        """Seconds still to wait before ``ticket``'s documents may go (0: now)."""
        self._refill(now)
        owed = ticket - self.credited
        if owed <= 1e-9 or self.rate is None:
            return 0.0
        return owed / self.rate


# --------------------------------------------------------------------------- the load


class LoadLimits(msgspec.Struct, frozen=True, kw_only=True):
    """When the load guard backs off: a PING round trip above ``ping_ms`` milliseconds,
    or ``used_memory`` above ``memory_fraction`` of ``maxmemory`` (of the machine's
    memory, ``total_system_memory``, where maxmemory is 0). None: that check is off."""

    ping_ms: float | None = DEFAULT_PING_MS
    memory_fraction: float | None = DEFAULT_MEMORY_FRACTION

    def __post_init__(self) -> None:
        if self.ping_ms is not None and not (math.isfinite(self.ping_ms) and self.ping_ms > 0):
            raise BadInputError(
                f"the PING limit must be a positive number of ms, not {self.ping_ms:g}"
            )
        fraction = self.memory_fraction
        if fraction is not None and not (0 < fraction <= 1):
            raise BadInputError(f"the memory limit must be a fraction in (0, 1], not {fraction:g}")


class LoadSample(msgspec.Struct, frozen=True, kw_only=True):
    """One look at the server: PING round trip and INFO memory (None: not measured)."""

    ping_ms: float | None = None
    used_memory: int | None = None
    maxmemory: int | None = None
    total_system_memory: int | None = None

    @property
    def memory_fraction(self) -> float | None:
        """used_memory over maxmemory (over the machine's memory where maxmemory is 0)."""
        limit = self.maxmemory or self.total_system_memory
        if self.used_memory is None or not limit:
            return None
        return self.used_memory / limit

    def over(self, limits: LoadLimits) -> str | None:
        """Which limit this sample crosses, in words; None when under both."""
        ping, fraction = self.ping_ms, self.memory_fraction
        if limits.ping_ms is not None and ping is not None and ping > limits.ping_ms:
            return f"PING took {ping:,.1f} ms (limit {limits.ping_ms:g} ms)"
        limit = limits.memory_fraction
        if limit is not None and fraction is not None and fraction > limit:
            of = "maxmemory" if self.maxmemory else "the machine's memory"
            return f"used_memory is {fraction:.1%} of {of} (limit {limit:.0%})"
        return None


class LoadPolicy:
    """The rate the server's load allows: a cap below the operator's max rate while
    backing off (``cap``), none otherwise.

    Once ``patience`` samples in a row cross a limit, each sample over it multiplies
    the rate by ``decrease`` (from the max rate, or from the rate measured where there
    is none), never below a floor (``floor_fraction`` of where it started, at least
    ``min_rate``); each sample under the limits adds ``recovery`` of that starting rate
    back, and the cap goes once it reaches it.
    """

    def __init__(
        self,
        limits: LoadLimits | None = None,
        *,
        decrease: float = DECREASE,
        recovery: float = RECOVERY,
        floor_fraction: float = FLOOR_FRACTION,
        min_rate: float = MIN_RATE,
        patience: int = PATIENCE,
    ) -> None:
        self.limits = limits or LoadLimits()
        self.patience = patience
        self.over_in_a_row = 0
        self.decrease = decrease
        self.recovery = recovery
        self.floor_fraction = floor_fraction
        self.min_rate = min_rate
        self.cap: float | None = None
        self.reference: float | None = None  # the rate backed off from
        self.backoffs = 0  # samples that cut the rate
        self.reason: str | None = None  # the limit the last cut crossed

    @property
    def backing_off(self) -> bool:
        return self.cap is not None

    def floor(self, max_rate: float | None) -> float:
        """The lowest rate a back-off goes to (never above ``max_rate``)."""
        low = max(self.min_rate, self.floor_fraction * (self.reference or 0.0))
        return low if max_rate is None else min(low, max_rate)

    def update(
        self, sample: LoadSample, max_rate: float | None, measured: float | None = None
    ) -> float | None:
        """Take one sample into account; returns the cap now in force (None: none).

        ``measured`` is the rate documents went at since the last sample (documents a
        second), where known: backing off from no limit starts from it.
        """
        reason = sample.over(self.limits)
        self.over_in_a_row = self.over_in_a_row + 1 if reason is not None else 0
        if reason is not None and self.cap is None and self.over_in_a_row < self.patience:
            return None  # perhaps a blip: the next sample says
        if reason is not None:
            if self.cap is None:
                known = [r for r in (max_rate, measured) if r is not None and r > 0]
                self.reference = min(known) if known else START_RATE
            start = self.cap if self.cap is not None else self.reference
            assert start is not None
            self.cap = max(self.floor(max_rate), start * self.decrease)
            self.backoffs += 1
            self.reason = reason
        elif self.cap is not None and self.reference is not None:
            ceiling = self.reference if max_rate is None else min(self.reference, max_rate)
            self.cap += self.recovery * self.reference
            if self.cap >= ceiling:
                self.cap = self.reference = None
        return self.cap

    def rate(self, max_rate: float | None) -> float | None:
        """The rate in force: the lower of ``max_rate`` and the back-off cap."""
        if self.cap is None:
            return max_rate
        return self.cap if max_rate is None else min(self.cap, max_rate)


# --------------------------------------------------------------------------- stored


class ThrottleSetting(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="version",
    tag=1,
):
    """The max rate `redismigrate throttle` set for an index (None: no limit), when and
    from which host; the value of ``throttle_key(index)``."""

    max_rate: float | None
    set_at: str
    host: str

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, raw: bytes | str | None) -> ThrottleSetting | None:
        """The setting in a key's value; None when empty, not ours or not valid."""
        if not raw:
            return None
        try:
            setting = _DECODER.decode(raw)
            check_max_rate(setting.max_rate)
        except (msgspec.DecodeError, BadInputError):
            return None
        return setting

    def describe(self) -> str:
        return f"redismigrate throttle on host {self.host} at {self.set_at}"


_DECODER = msgspec.json.Decoder(ThrottleSetting)


class ThrottleReport(Model, frozen=True, kw_only=True):
    """How a run was throttled: the migration report's ``throttle``."""

    max_rate: float | None  # the operator's max rate at the end (None: no limit)
    final_rate: float | None  # the rate in force at the end (lower while backing off)
    set_by: str = "--max-rate"  # or the `redismigrate throttle` that set the max rate
    throttled_seconds: float = 0.0  # time the run's writes waited, all reasons
    backoff_seconds: float = 0.0  # ... of it while the load guard held the rate down
    backoffs: int = 0  # samples over a load limit (each cut the rate)
    backoff_reason: str | None = None  # the limit the last back-off crossed
    changes: int = 0  # max rates `redismigrate throttle` set during the run
