"""A Redis Cluster as data: slots, shards, key placement and whether it held still.

Pure code, no I/O (the async layer, ``aio/cluster.py``, asks the servers). A cluster
splits the key space into 16384 slots (:func:`key_slot`: CRC16/XMODEM of the key, or of
its hash tag, modulo 16384); each slot belongs to one primary, which may have replicas.

- :func:`parse_cluster_shards`, :func:`parse_cluster_slots` and
  :func:`parse_cluster_nodes` read the replies of CLUSTER SHARDS (Redis 7+), CLUSTER
  SLOTS and CLUSTER NODES in every shape redis-py hands them over (RESP2 or RESP3, bytes
  or str, sent as ``execute_command("CLUSTER", "SHARDS")`` or parsed by redis-py's
  cluster client) into a :class:`ClusterTopology`;
- :func:`group_by_primary` splits a batch of keys by owning primary;
- :func:`check_snapshot` and :func:`compare` say whether a cluster is fit for a run and
  whether it changed between two :class:`ClusterSnapshot` (a slot moved or is moving, a
  primary was replaced), one line per reason;
- :func:`judge_search` tells a cluster whose search module has the coordinator (Redis 8:
  FT.CREATE, FT.DROPINDEX and FT.ALIAS* sent to any node reach every shard) from one
  without it (Redis Stack 7.4: an index name is a key of one shard, refused);
- :func:`tagged_key` names redismigrate's own keys of an index so they share one slot.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import count, pairwise
from typing import Any, Literal

from redismigrate.capabilities import parse_module_version
from redismigrate.errors import RedisMigrateError, ServerReplyError
from redismigrate.schema import Model

SLOTS = 16384
KEY_PREFIX = "redismigrate"
# endpoints CLUSTER SHARDS / SLOTS give for a node whose address it does not know: the
# client is to use the address it asked
_UNKNOWN_ENDPOINTS = ("", "?")
# how many ranges of slots one reason names before it says "and N more"
_LISTED_RANGES = 4


class TopologyError(ServerReplyError):
    """A cluster's topology reply cannot be read, or describes no usable cluster."""


class ClusterChanged(RedisMigrateError):
    """The cluster's slots moved, are moving, or a primary was replaced."""


# ---------------------------------------------------------------------------- keys


def hash_tag(key: bytes) -> bytes | None:
    """The part of ``key`` Redis hashes instead of the whole key, or None.

    As Redis does: the bytes between the first ``{`` and the first ``}`` after it, when
    there are any (``{}`` hashes the whole key).
    """
    start = key.find(b"{")
    if start < 0:
        return None
    end = key.find(b"}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def key_slot(key: bytes | str) -> int:
    """The slot of ``key`` (str keys as their UTF-8 bytes, as redis-py sends them)."""
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    tag = hash_tag(raw)
    # binascii.crc_hqx with 0 as the start value is CRC16/XMODEM, the CRC Redis uses
    return binascii.crc_hqx(raw if tag is None else tag, 0) % SLOTS


@lru_cache(maxsize=1024)
def name_in_slot(slot: int, base: str) -> str:
    """``<base>:{<n>}`` for the first ``n`` that hashes to ``slot``: a name of
    redismigrate's own that a script may use beside a key of that slot."""
    for n in count():
        name = f"{base}:{{{n}}}"
        if key_slot(name) == slot:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def tagged_key(index_name: str, *parts: str) -> str:
    """``redismigrate:{<index>}:<part>:...``: keys of one index that share one slot.

    The tag is the index name, so these keys also share the slot of the lock key
    ``redismigrate:lock:{<index>}``. A name whose own ``}`` would end the tag before any
    of it (``}x``) gets a digest of itself as the tag instead.
    """
    if not index_name:
        raise ValueError("an index name is needed for a tagged key")
    tag = index_name
    if index_name.startswith("}"):
        tag = "#" + hashlib.sha1(index_name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return ":".join([f"{KEY_PREFIX}:{{{tag}}}", *parts])


# ---------------------------------------------------------------------------- the model


class NodeInfo(Model, frozen=True, kw_only=True):
    """One node of the cluster, as CLUSTER SHARDS or CLUSTER SLOTS gave it."""

    node_id: str
    host: str
    port: int
    tls_port: int | None = None
    role: Literal["primary", "replica"] = "primary"
    health: str | None = None  # "online", "failed", "loading"; None: not reported (SLOTS)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """Short name for messages: the first 8 characters of the id and the address."""
        return f"{self.node_id[:8]} ({self.address})"


class SlotRange(Model, frozen=True, kw_only=True):
    """Slots ``first`` to ``last``, both included."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def text(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


class Shard(Model, frozen=True, kw_only=True):
    """A primary, its replicas and the slots it serves."""

    primary: NodeInfo
    replicas: tuple[NodeInfo, ...] = ()
    slots: tuple[SlotRange, ...] = ()

    @property
    def slot_count(self) -> int:
        return sum(r.count for r in self.slots)


class SlotMigration(Model, frozen=True, kw_only=True):
    """A slot a node is handing over (``migrating``) or taking in (``importing``)."""

    slot: int
    state: Literal["migrating", "importing"]
    node_id: str  # the node that reported it
    peer_id: str  # where the slot goes to (migrating) or comes from (importing)


class NodeLine(Model, frozen=True, kw_only=True):
    """One line of CLUSTER NODES."""

    node_id: str
    host: str
    port: int
    flags: tuple[str, ...]
    primary_id: str | None = None  # the primary of a replica
    connected: bool = True
    slots: tuple[SlotRange, ...] = ()
    migrations: tuple[SlotMigration, ...] = ()

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> str | None:
        """``fail`` or ``fail?`` when the node is (thought to be) down, else None."""
        for flag in ("fail", "fail?"):
            if flag in self.flags:
                return flag
        return None


class ClusterTopology(Model, frozen=True, kw_only=True):
    """Every shard of a cluster, sorted by their first slot."""

    shards: tuple[Shard, ...]
    source: Literal["CLUSTER SHARDS", "CLUSTER SLOTS"] = "CLUSTER SHARDS"

    @property
    def primaries(self) -> tuple[NodeInfo, ...]:
        """The primaries that serve slots (the ones that hold keys)."""
        return tuple(s.primary for s in self.shards if s.slots)

    def node(self, node_id: str) -> NodeInfo | None:
        """The primary or replica with this id, if the topology has it."""
        for shard in self.shards:
            for node in (shard.primary, *shard.replicas):
                if node.node_id == node_id:
                    return node
        return None

    def shard_of(self, node_id: str) -> Shard | None:
        """The shard ``node_id`` is the primary or a replica of."""
        for shard in self.shards:
            if node_id in (shard.primary.node_id, *(r.node_id for r in shard.replicas)):
                return shard
        return None

    def owner(self, slot: int) -> NodeInfo | None:
        """The primary serving ``slot``; None when no node serves it."""
        owner_id = owner_table(self)[slot]
        return None if owner_id is None else self.node(owner_id)

    def unassigned(self) -> tuple[SlotRange, ...]:
        table = owner_table(self)
        return _ranges(s for s in range(SLOTS) if table[s] is None)

    def label(self, node_id: str) -> str:
        found = self.node(node_id)
        return found.label if found is not None else node_id[:8]


class ClusterSnapshot(Model, frozen=True, kw_only=True):
    """The topology as one primary sees it, the slots any primary is moving, and what
    else was wrong when it was taken (primaries that disagree, nodes that did not say)."""

    topology: ClusterTopology
    migrations: tuple[SlotMigration, ...] = ()
    problems: tuple[str, ...] = ()


class Stability(Model, frozen=True, kw_only=True):
    """The verdict on a snapshot, or on two of them: one line per reason it is not stable."""

    reasons: tuple[str, ...] = ()

    @property
    def stable(self) -> bool:
        return not self.reasons

    def raise_if_unstable(self, when: str) -> None:
        """ClusterChanged naming every reason, e.g. ``when="before the drop"``."""
        if self.reasons:
            raise ClusterChanged(
                f"the Redis Cluster is not stable {when}: {'; '.join(self.reasons)}"
            )


# ---------------------------------------------------------------------------- replies


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def _int(value: Any, what: str) -> int:
    try:
        return int(_text(value))
    except ValueError:
        raise TopologyError(f"unexpected {what} in a cluster topology reply: {value!r}") from None


def _pairs(value: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat list of names and values, names as text."""
    if isinstance(value, Mapping):
        return {_text(k): v for k, v in value.items()}
    if isinstance(value, list | tuple) and len(value) % 2 == 0:
        return {_text(value[i]): value[i + 1] for i in range(0, len(value), 2)}
    raise TopologyError(f"unexpected entry in a cluster topology reply: {value!r}")


def _ranges(slots: Iterable[int]) -> tuple[SlotRange, ...]:
    """Sorted slots as ranges, adjacent ones merged."""
    found: list[SlotRange] = []
    for slot in sorted(set(slots)):
        if found and found[-1].last == slot - 1:
            found[-1] = SlotRange(first=found[-1].first, last=slot)
        else:
            found.append(SlotRange(first=slot, last=slot))
    return tuple(found)


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[SlotRange, ...]:
    merged: list[SlotRange] = []
    for first, last in sorted(ranges):
        if not 0 <= first <= last < SLOTS:
            raise TopologyError(f"slot range {first}-{last} is outside 0-{SLOTS - 1}")
        if merged and first <= merged[-1].last + 1:
            merged[-1] = SlotRange(first=merged[-1].first, last=max(last, merged[-1].last))
        else:
            merged.append(SlotRange(first=first, last=last))
    return tuple(merged)


def _host(*candidates: Any, default: str) -> str:
    for candidate in candidates:
        text = _text(candidate)
        if text not in _UNKNOWN_ENDPOINTS:
            return text
    return default


def _topology(shards: Iterable[Shard], source: Any) -> ClusterTopology:
    ordered = sorted(
        shards, key=lambda s: (s.slots[0].first if s.slots else SLOTS, s.primary.node_id)
    )
    claimed = sorted((r.first, r.last, s.primary.node_id) for s in ordered for r in s.slots)
    for (_, last, one), (first, _, other) in pairwise(claimed):
        if first <= last:
            raise TopologyError(f"slot {first} is claimed by both {one} and {other}")
    return ClusterTopology(shards=tuple(ordered), source=source)


def _slot_pairs(raw: Any) -> list[tuple[int, int]]:
    """CLUSTER SHARDS' slots: ``[a, b, c, d]`` on the wire, ``[(a, b), (c, d)]`` parsed."""
    items = list(raw or [])
    if items and all(isinstance(i, list | tuple) for i in items):
        return [(_int(i[0], "slot"), _int(i[-1], "slot")) for i in items]
    if len(items) % 2:
        raise TopologyError(f"unexpected slots in a CLUSTER SHARDS reply: {raw!r}")
    return [(_int(items[i], "slot"), _int(items[i + 1], "slot")) for i in range(0, len(items), 2)]


def parse_cluster_shards(reply: Any, *, default_host: str = "") -> ClusterTopology:
    """A CLUSTER SHARDS reply (RESP2 or RESP3, bytes or str, raw or parsed by redis-py).

    ``default_host`` stands in for a node whose endpoint the server does not know.
    """
    if not isinstance(reply, list | tuple):
        raise TopologyError(f"unexpected CLUSTER SHARDS reply: {reply!r}")
    shards: list[Shard] = []
    for raw_shard in reply:
        shard = _pairs(raw_shard)
        slots = _merge(_slot_pairs(shard.get("slots")))
        primary: NodeInfo | None = None
        replicas: list[NodeInfo] = []
        for raw_node in shard.get("nodes") or []:
            node = _pairs(raw_node)
            role = _text(node.get("role"))
            tls_port = _int(node["tls-port"], "port") if node.get("tls-port") else None
            port = _int(node["port"], "port") if node.get("port") else tls_port
            if port is None:
                raise TopologyError(f"a node of CLUSTER SHARDS has no port: {raw_node!r}")
            info = NodeInfo(
                node_id=_text(node.get("id")),
                host=_host(node.get("endpoint"), node.get("ip"), default=default_host),
                port=port,
                tls_port=tls_port,
                role="primary" if role == "master" else "replica",
                health=_text(node.get("health")) or None,
            )
            if not info.node_id:
                raise TopologyError(f"a node of CLUSTER SHARDS has no id: {raw_node!r}")
            if info.role == "primary":
                if primary is not None:
                    raise TopologyError(
                        f"a shard of CLUSTER SHARDS has two primaries: {primary.node_id} and "
                        f"{info.node_id}"
                    )
                primary = info
            else:
                replicas.append(info)
        if primary is None:
            if slots:
                raise TopologyError(
                    f"slots {', '.join(r.text() for r in slots)} have no primary in CLUSTER SHARDS"
                )
            continue  # replicas whose primary is gone, serving nothing
        replicas.sort(key=lambda n: n.node_id)
        shards.append(Shard(primary=primary, replicas=tuple(replicas), slots=slots))
    return _topology(shards, "CLUSTER SHARDS")


def _slots_node(raw: Any, role: Literal["primary", "replica"], default_host: str) -> NodeInfo:
    if not isinstance(raw, list | tuple) or len(raw) < 3:
        raise TopologyError(
            f"a node of CLUSTER SLOTS carries no node id: {raw!r} (redis-py's cluster client "
            "drops the ids: send CLUSTER SLOTS to one node with execute_command)"
        )
    metadata = _pairs(raw[3]) if len(raw) > 3 and raw[3] else {}
    return NodeInfo(
        node_id=_text(raw[2]),
        host=_host(raw[0], metadata.get("ip"), default=default_host),
        port=_int(raw[1], "port"),
        role=role,
    )


def parse_cluster_slots(reply: Any, *, default_host: str = "") -> ClusterTopology:
    """A CLUSTER SLOTS reply, as sent to one node (RESP2 or RESP3, bytes or str).

    redis-py's cluster client turns the reply into ``{(first, last): {"primary": ...}}``
    without node ids; that shape is refused (TopologyError), since a failover can only
    be told by the ids.
    """
    if isinstance(reply, Mapping) or not isinstance(reply, list | tuple):
        raise TopologyError(
            "this CLUSTER SLOTS reply carries no node ids (redis-py's cluster client drops "
            "them): send CLUSTER SLOTS to one node with execute_command"
        )
    primaries: dict[str, NodeInfo] = {}
    ranges: dict[str, list[tuple[int, int]]] = {}
    replicas: dict[str, dict[str, NodeInfo]] = {}
    for entry in reply:
        if not isinstance(entry, list | tuple) or len(entry) < 3:
            raise TopologyError(f"unexpected CLUSTER SLOTS entry: {entry!r}")
        first, last = _int(entry[0], "slot"), _int(entry[1], "slot")
        primary = _slots_node(entry[2], "primary", default_host)
        primaries.setdefault(primary.node_id, primary)
        ranges.setdefault(primary.node_id, []).append((first, last))
        for raw in entry[3:]:
            replica = _slots_node(raw, "replica", default_host)
            replicas.setdefault(primary.node_id, {})[replica.node_id] = replica
    shards = [
        Shard(
            primary=primary,
            replicas=tuple(sorted(replicas.get(node_id, {}).values(), key=lambda n: n.node_id)),
            slots=_merge(ranges[node_id]),
        )
        for node_id, primary in primaries.items()
    ]
    return _topology(shards, "CLUSTER SLOTS")


def _node_slot_token(
    token: str, node_id: str
) -> tuple[tuple[int, int] | None, SlotMigration | None]:
    if token.startswith("["):
        body = token.strip("[]")
        if "->-" in body:
            slot, peer = body.split("->-", 1)
            return None, SlotMigration(
                slot=_int(slot, "slot"), state="migrating", node_id=node_id, peer_id=peer
            )
        if "-<-" in body:
            slot, peer = body.split("-<-", 1)
            return None, SlotMigration(
                slot=_int(slot, "slot"), state="importing", node_id=node_id, peer_id=peer
            )
        raise TopologyError(f"unexpected slot {token!r} in CLUSTER NODES")
    first, _, last = token.partition("-")
    return (_int(first, "slot"), _int(last or first, "slot")), None


def _address(text: str) -> tuple[str, int]:
    """``ip:port@cport[,hostname]`` as (host, port); the hostname when the ip is empty."""
    main, _, hostname = text.partition(",")
    hostport = main.split("@", 1)[0]
    host, _, port = hostport.rpartition(":")
    return (host or hostname), _int(port or 0, "port")


def _node_line(line: str) -> NodeLine:
    parts = line.split()
    if len(parts) < 8:
        raise TopologyError(f"unexpected CLUSTER NODES line: {line!r}")
    node_id = parts[0]
    host, port = _address(parts[1])
    ranges: list[tuple[int, int]] = []
    migrations: list[SlotMigration] = []
    for token in parts[8:]:
        found, migration = _node_slot_token(token, node_id)
        if found is not None:
            ranges.append(found)
        if migration is not None:
            migrations.append(migration)
    return NodeLine(
        node_id=node_id,
        host=host,
        port=port,
        flags=tuple(parts[2].split(",")),
        primary_id=None if parts[3] == "-" else parts[3],
        connected=parts[7] == "connected",
        slots=_merge(ranges),
        migrations=tuple(migrations),
    )


def _parsed_node_line(address: str, entry: Mapping[str, Any]) -> NodeLine:
    """An entry of redis-py's parsed CLUSTER NODES (``{"ip:port": {...}}``)."""
    node_id = _text(entry.get("node_id"))
    host, port = _address(address)
    ranges = [(_int(r[0], "slot"), _int(r[-1], "slot")) for r in entry.get("slots") or [] if r]
    migrations = tuple(
        SlotMigration(
            slot=_int(m["slot"], "slot"),
            state="migrating" if _text(m["state"]) == "migrating" else "importing",
            node_id=node_id,
            peer_id=_text(m["node_id"]),
        )
        for m in entry.get("migrations") or []
    )
    master = _text(entry.get("master_id"))
    return NodeLine(
        node_id=node_id,
        host=host,
        port=port,
        flags=tuple(_text(entry.get("flags")).split(",")),
        primary_id=None if master in ("", "-") else master,
        connected=bool(entry.get("connected", True)),
        slots=_merge(ranges),
        migrations=migrations,
    )


def parse_cluster_nodes(reply: Any) -> tuple[NodeLine, ...]:
    """A CLUSTER NODES reply: the text (bytes or str), or redis-py's parsed mapping."""
    if isinstance(reply, Mapping):
        return tuple(_parsed_node_line(_text(a), _pairs(e)) for a, e in reply.items())
    if not isinstance(reply, bytes | str):
        raise TopologyError(f"unexpected CLUSTER NODES reply: {reply!r}")
    return tuple(_node_line(line) for line in _text(reply).splitlines() if line.strip())


def migrations_of(lines: Iterable[NodeLine]) -> tuple[SlotMigration, ...]:
    """The slots the answering node (the ``myself`` line) is moving, as CLUSTER NODES
    shows them only there."""
    return tuple(m for line in lines if line.myself for m in line.migrations)


# ---------------------------------------------------------------------------- placement


@lru_cache(maxsize=16)
def owner_table(topology: ClusterTopology) -> tuple[str | None, ...]:
    """For each slot, the node id of the primary serving it (None: nobody)."""
    table: list[str | None] = [None] * SLOTS
    for shard in topology.shards:
        for r in shard.slots:
            table[r.first : r.last + 1] = [shard.primary.node_id] * r.count
    return tuple(table)


def owner_of(topology: ClusterTopology, key: bytes | str) -> NodeInfo:
    """The primary serving ``key``'s slot; TopologyError when no node serves it."""
    slot = key_slot(key)
    found = topology.owner(slot)
    if found is None:
        raise TopologyError(f"slot {slot} is served by no node of the cluster")
    return found


def group_positions(topology: ClusterTopology, keys: Sequence[bytes]) -> dict[str, list[int]]:
    """``{primary node id: [position of each of its keys in keys]}``, in key order."""
    table = owner_table(topology)
    groups: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        slot = key_slot(key)
        owner = table[slot]
        if owner is None:
            raise TopologyError(f"slot {slot} is served by no node of the cluster")
        groups.setdefault(owner, []).append(position)
    return groups


def group_by_primary(topology: ClusterTopology, keys: Sequence[bytes]) -> dict[str, list[bytes]]:
    """``{primary node id: its keys}``, each group in the order of ``keys``."""
    return {
        owner: [keys[p] for p in positions]
        for owner, positions in group_positions(topology, keys).items()
    }


def key_served_by(topology: ClusterTopology, node_id: str, base: str) -> str:
    """``<base>:{<n>}`` for the first ``n`` whose slot primary ``node_id`` serves: a
    name of the same purpose on each primary (what a node keeps of its own, such as
    its keyspace-notification setting). TopologyError when it serves no slot."""
    table = owner_table(topology)
    if node_id not in table:
        raise TopologyError(f"node {node_id[:8]} serves no slot of the cluster")
    for n in range(1 << 22):  # a few tries per primary; tens of thousands for one slot
        name = f"{base}:{{{n}}}"
        if table[key_slot(name)] == node_id:
            return name
    raise TopologyError(f"no name {base}:{{n}} falls in a slot of node {node_id[:8]}")


# ---------------------------------------------------------------------------- stability


def _listed(ranges: Sequence[SlotRange]) -> str:
    shown = ", ".join(r.text() for r in ranges[:_LISTED_RANGES])
    more = len(ranges) - _LISTED_RANGES
    words = "slot" if len(ranges) == 1 and ranges[0].count == 1 else "slots"
    return f"{words} {shown}" + (f" and {more} more ranges" if more > 0 else "")


def check_snapshot(snapshot: ClusterSnapshot) -> Stability:
    """Whether one snapshot shows a cluster fit for a run: every slot served, every
    primary healthy, no slot migrating or importing, the primaries agreeing."""
    topology = snapshot.topology
    reasons: list[str] = []
    unassigned = topology.unassigned()
    if unassigned:
        reasons.append(f"no node serves {_listed(unassigned)}")
    for primary in topology.primaries:
        if primary.health not in (None, "online"):
            reasons.append(f"primary {primary.label} is {primary.health}")
    moving: dict[tuple[str, str, str], list[int]] = {}
    for m in snapshot.migrations:
        moving.setdefault((m.state, m.node_id, m.peer_id), []).append(m.slot)
    ordered = sorted(moving.items(), key=lambda i: (min(i[1]), i[0][0] != "migrating", i[0]))
    for (state, node_id, peer_id), slots in ordered:
        where = "to" if state == "migrating" else "from"
        reasons.append(
            f"{topology.label(node_id)} is {state} {_listed(_ranges(slots))} {where} "
            f"{topology.label(peer_id)} (a resharding is going on)"
        )
    reasons.extend(snapshot.problems)
    return Stability(reasons=tuple(reasons))


def _moved_slots(before: ClusterTopology, after: ClusterTopology) -> list[str]:
    old, new = owner_table(before), owner_table(after)
    changed: dict[tuple[str | None, str | None], list[int]] = {}
    for slot in range(SLOTS):
        if old[slot] != new[slot]:
            changed.setdefault((old[slot], new[slot]), []).append(slot)
    reasons: list[str] = []
    for (was, now), slots in sorted(changed.items(), key=lambda i: i[1][0]):
        listed = _listed(_ranges(slots))
        if now is None:
            reasons.append(f"no node serves {listed} any more (was {before.label(was or '')})")
            continue
        if was is None:
            reasons.append(f"{after.label(now)} now serves {listed}")
            continue
        shard = before.shard_of(was)
        if shard is not None and now in (r.node_id for r in shard.replicas):
            reasons.append(
                f"failover: primary {before.label(was)} was replaced by its replica "
                f"{after.label(now)} for {listed}"
            )
        else:
            reasons.append(f"{listed} moved from {before.label(was)} to {after.label(now)}")
    return reasons


def compare(before: ClusterSnapshot, after: ClusterSnapshot) -> Stability:
    """Whether the cluster held still from ``before`` to ``after``, and is still fit:
    the reasons of :func:`check_snapshot` for ``after``, then each change of a slot's
    primary (a failover named as such) and each primary that answers elsewhere now."""
    reasons = list(check_snapshot(after).reasons)
    reasons.extend(_moved_slots(before.topology, after.topology))
    for node in before.topology.primaries:
        now = after.topology.node(node.node_id)
        if now is not None and (now.host, now.port) != (node.host, node.port):
            reasons.append(f"node {node.label} now answers at {now.address}")
    return Stability(reasons=tuple(reasons))


def disagreements(reference_id: str, views: Mapping[str, ClusterTopology]) -> tuple[str, ...]:
    """One line per primary whose view of the slots differs from ``reference_id``'s
    (as during a failover or a resharding, until the news has spread)."""
    reference = views[reference_id]
    table = owner_table(reference)
    found: list[str] = []
    for node_id, view in sorted(views.items()):
        if node_id == reference_id:
            continue
        other = owner_table(view)
        differ = [s for s in range(SLOTS) if other[s] != table[s]]
        if differ:
            found.append(
                f"{reference.label(node_id)} and {reference.label(reference_id)} disagree on "
                f"the primary of {_listed(_ranges(differ))}"
            )
    return tuple(found)


# ---------------------------------------------------------------------------- search


class NodeSearch(Model, frozen=True, kw_only=True):
    """What one primary said about its search module (None: it would not say)."""

    node_id: str
    address: str
    search_version: tuple[int, int, int] | None = None
    indexes: tuple[str, ...] | None = None  # FT._LIST, sorted
    # FT.INFO of an index name hashing to another primary's slot: the MOVED / ASK reply,
    # or None when the node answered it itself (or was not asked: see ``probed``)
    redirected: str | None = None
    probed: bool = False
    partitions: int | None = None  # SEARCH.CLUSTERINFO's num_partitions, where answered
    errors: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.node_id[:8]} ({self.address})"


class SearchCoordination(Model, frozen=True, kw_only=True):
    """Whether the cluster's search module has the coordinator, with the reasons if not."""

    coordinator: bool
    search_everywhere: bool
    indexes: tuple[str, ...] = ()  # FT._LIST, when every primary agrees
    reasons: tuple[str, ...] = ()
    nodes: tuple[NodeSearch, ...] = ()

    @property
    def summary(self) -> str:
        if self.coordinator:
            return "the search module runs with its coordinator on every primary"
        return "; ".join(self.reasons)


def search_version(modules: Any) -> tuple[int, int, int] | None:
    """The search module's version in a MODULE LIST reply; None when it is not loaded."""
    for module in modules or []:
        entry = _pairs(module)
        if _text(entry.get("name")).lower() in ("search", "ft", "searchlight"):
            return parse_module_version(_int(entry.get("ver"), "module version"))
    return None


def cluster_partitions(reply: Any) -> int | None:
    """``num_partitions`` of a SEARCH.CLUSTERINFO reply, if it has one."""
    try:
        found = _pairs(reply).get("num_partitions")
    except TopologyError:
        return None
    try:
        return None if found is None else int(_text(found))
    except ValueError:
        return None


def judge_search(nodes: Sequence[NodeSearch], primaries: int) -> SearchCoordination:
    """Tell a cluster with the search coordinator from one without it.

    With the coordinator (Redis 8) every primary has the search module, index names
    are no keys (FT.INFO of any name is answered by the node asked) and every primary
    lists the same indexes. Without it (Redis Stack 7.4) an index name is a key of one
    shard: FT.INFO of a name in another shard's slot is answered MOVED. FT._LIST alone
    cannot tell (no indexes at all agree too), hence the FT.INFO probe.
    """
    reasons: list[str] = []
    known = [n for n in nodes if n.search_version is not None or n.indexes is not None]
    if not known:
        return SearchCoordination(
            coordinator=False,
            search_everywhere=False,
            reasons=("no primary of the cluster has the search module",),
            nodes=tuple(nodes),
        )
    missing = [n for n in nodes if n.search_version is None and n.indexes is None]
    for node in missing:
        reasons.append(f"the search module is not loaded on primary {node.label}")
    redirected = [n for n in nodes if n.redirected]
    if redirected:
        first = redirected[0]
        others = len(redirected) - 1
        also = f" (and {others} more primar{'ies' if others > 1 else 'y'})" if others else ""
        reasons.append(
            f"FT.INFO of an index name in another shard's slot was answered {first.redirected} "
            f"on {first.label}{also}: index names are keys of one shard and each shard's "
            "search module works alone (no search coordinator, as in Redis Stack 7.4)"
        )
    lists = {n.indexes for n in nodes if n.indexes is not None}
    if len(lists) > 1:
        shown = "; ".join(
            f"{n.label} lists {', '.join(n.indexes) or 'none'}"
            for n in nodes
            if n.indexes is not None
        )
        reasons.append(f"the primaries list different indexes (FT._LIST): {shown}")
    for node in nodes:
        if node.partitions is not None and node.partitions != primaries:
            reasons.append(
                f"the search coordinator on {node.label} counts {node.partitions} shards; the "
                f"cluster has {primaries} primaries"
            )
    confirmed = any(n.probed and not n.redirected for n in nodes) or any(
        n.partitions is not None for n in nodes
    )
    if not confirmed and not reasons:
        problems = sorted({e for n in nodes for e in n.errors})
        reasons.append(
            "the search coordinator could not be confirmed on any primary"
            + (f" ({'; '.join(problems)})" if problems else "")
        )
    indexes = next(iter(lists)) if len(lists) == 1 else ()
    return SearchCoordination(
        coordinator=not reasons,
        search_everywhere=not missing,
        indexes=indexes,
        reasons=tuple(reasons),
        nodes=tuple(nodes),
    )


__all__ = [
    "KEY_PREFIX",
    "SLOTS",
    "ClusterChanged",
    "ClusterSnapshot",
    "ClusterTopology",
    "NodeInfo",
    "NodeLine",
    "NodeSearch",
    "SearchCoordination",
    "Shard",
    "SlotMigration",
    "SlotRange",
    "Stability",
    "TopologyError",
    "check_snapshot",
    "cluster_partitions",
    "compare",
    "disagreements",
    "group_by_primary",
    "group_positions",
    "hash_tag",
    "judge_search",
    "key_served_by",
    "key_slot",
    "migrations_of",
    "name_in_slot",
    "owner_of",
    "owner_table",
    "parse_cluster_nodes",
    "parse_cluster_shards",
    "parse_cluster_slots",
    "search_version",
    "tagged_key",
]
