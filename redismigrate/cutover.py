"""The online cut-over sent one command at a time (no MULTI/EXEC), as a Redis Cluster
with the search coordinator requires: its result, and what a plan or report says about
the moment between the alias move and the drop of the old index. No I/O here.

Two orders exist (``CutOverSteps.order``):

- ``alias_then_drop``: the name is made (or moved as) an alias of the new index first,
  and the old index is dropped after. The name resolves all the time. When the name is
  a plain index, this needs a server that accepts an alias named like an existing
  index (search 2.10 does; the lookup goes to the index while it exists and through the
  alias once it is dropped).
- ``drop_then_alias``: the old index is dropped first and the name is added as an alias
  of the new index after, because the server refuses an alias named like an existing
  index (search 8 answers "Alias conflicts with an existing index name"). Between the
  two commands the name resolves to no index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALIAS_THEN_DROP = "alias_then_drop"
DROP_THEN_ALIAS = "drop_then_alias"
ORDERS = (ALIAS_THEN_DROP, DROP_THEN_ALIAS)

# FT.ALIASADD <name> <new> refused because of the name itself: an alias of that name is
# there already (search 2.10 keeps it, hidden behind the index of the same name, after
# an interrupted run), or the server will not let an alias shadow an index name
# (search 8: "Alias conflicts with an existing index name", with or without the
# SEARCH_ALIAS_CONFLICT code in front).
_ALIAS_NAME_TAKEN = re.compile(
    r"alias already exists|alias conflicts with an existing index", re.IGNORECASE
)
_ALIAS_ALREADY_THERE = re.compile(r"alias already exists", re.IGNORECASE)


@dataclass(frozen=True)
class CutOverSteps:
    """What ``cut_over_in_steps`` did.

    ``dropped``: the physical index this call dropped (None when an earlier, interrupted
    call had dropped it already). ``order``: ``alias_then_drop`` or ``drop_then_alias``
    (see the module). ``window_seconds`` (time.perf_counter): for ``alias_then_drop`` from
    the first alias command (user aliases included) to the end of the drop; for
    ``drop_then_alias`` from the start of the drop to the end of the FT.ALIASADD that
    made the name resolve again; 0.0 when this call had no such command left to send.
    ``resumed``: part of the cut-over was found done already (a run resumed after it was
    killed between two commands).
    """

    dropped: str | None
    order: str
    window_seconds: float
    resumed: bool = False


def alias_name_taken(message: str) -> bool:
    """True when an FT.ALIASADD error says the alias's name is taken (by an alias of
    that name, or by an index the server will not let an alias shadow); False for
    other failures (no permission, unknown target index, cluster redirections)."""
    return _ALIAS_NAME_TAKEN.search(message) is not None


def alias_already_there(message: str) -> bool:
    """True when an FT.ALIASADD error says an alias of that name exists already."""
    return _ALIAS_ALREADY_THERE.search(message) is not None


def _duration(window_seconds: float | None) -> str:
    if window_seconds is None:
        return "a few round trips (not measured yet)"
    if window_seconds < 0.001:
        return "under a millisecond"
    if window_seconds < 1.0:
        return f"{window_seconds * 1000:,.1f} ms"
    return f"{window_seconds:,.2f} s"


def cut_over_window_sentence(order: str, window_seconds: float | None) -> str:
    """One sentence for a plan (``window_seconds`` None: not measured yet; present tense)
    or a report (the measured window; past tense) saying what queries and writes see
    while the cut-over's commands go out one at a time."""
    took = _duration(window_seconds)
    if order == ALIAS_THEN_DROP:
        if window_seconds is None:
            return (
                f"The cut-over is not atomic: for {took}, the window between moving the "
                "alias and dropping the old index, the name keeps resolving, but on a "
                "cluster with the search coordinator each shard changes over only when its "
                "copy of the forwarded command arrives, so a query fanned out in that window "
                "can merge shard results from the old and the new index, and writes in it "
                "are indexed by both."
            )
        return (
            f"The cut-over was not atomic: for {took}, the window between moving the alias "
            "and dropping the old index, the name kept resolving, but on a cluster with the "
            "search coordinator each shard changed over only when its copy of the forwarded "
            "command arrived, so a query fanned out in that window could merge shard results "
            "from the old and the new index, and writes in it were indexed by both."
        )
    if order == DROP_THEN_ALIAS:
        if window_seconds is None:
            return (
                "Where the server refuses an alias named like an existing index, the old "
                "index is dropped before the name becomes an alias of the new one, so for "
                f"{took}, the window between the two commands, the name resolves to no "
                "index: queries sent to it then get an unknown-index error, while writes "
                "keep being indexed by the new index."
            )
        return (
            "The old index was dropped before the name became an alias of the new one, so "
            f"for {took}, the window between the two commands, the name resolved to no "
            "index: queries sent to it then got an unknown-index error, while writes kept "
            "being indexed by the new index."
        )
    raise ValueError(f"unknown cut-over order {order!r}; expected one of {', '.join(ORDERS)}")
