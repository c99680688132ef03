"""The async planner: snapshot the live index, merge the patch, classify, explain."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.aliases import plan_aliases
from redismigrate.aio.cluster import ClusterConnections
from redismigrate.aio.connection import AsyncRedisClient, connect, execute
from redismigrate.aio.deployment import primaries_of
from redismigrate.aio.forecast import forecast_quality
from redismigrate.aio.indexes import (
    ft_info,
    list_indexes,
    read_schema_and_stats,
    server_capabilities,
)
from redismigrate.aio.keyspace import Servers, hash_field_of_each, json_path_of_each
from redismigrate.aio.ledger import cluster_route, recall_unreported
from redismigrate.aio.preflight import Command, malformed_vectors, preflight, refuse_cluster
from redismigrate.aio.topology import cluster_reply
from redismigrate.cutover import ALIAS_THEN_DROP, DROP_THEN_ALIAS, cut_over_window_sentence
from redismigrate.errors import BadInputError
from redismigrate.estimate import RECALL_QUERIES, MigrationEstimate, build_estimate
from redismigrate.ftinfo import pairs_to_dict, schema_from_ft_info
from redismigrate.keytext import key_text
from redismigrate.memory import MemoryRoom, average_key_bytes
from redismigrate.patch import SchemaPatch, diff_schemas, target_schema_notes
from redismigrate.plan import MigrationPlan, Online, OtherIndex, build_plan, seal_plan
from redismigrate.preflight import Preflight
from redismigrate.quantize import Encoding, decode_stored
from redismigrate.schema import DATATYPE_BYTES, IndexSchema, VectorField, default_json_path

KEY_SAMPLE_SIZE = 10
VECTOR_SAMPLE_SIZE = 2000
QUALITY_QUERIES = RECALL_QUERIES
ON_A_CLUSTER = (
    "the index lives on a Redis Cluster, where redismigrate does not re-encode online yet "
    "(its shadow fields and their mirroring are written per server)"
)


async def sample_keys(client: aioredis.Redis, index_name: str, count: int) -> list[bytes]:
    """Up to ``count`` document keys of the index, as bytes (a key need not be UTF-8;
    ``keytext.key_text`` shows one); read-only FT.SEARCH, no content."""
    if count <= 0:
        return []
    reply = await execute(
        client, "FT.SEARCH", index_name, "*", "NOCONTENT", "LIMIT", "0", str(count), "DIALECT", "2"
    )
    if isinstance(reply, dict):
        results = pairs_to_dict(reply).get("results", [])
        return [_key_bytes(pairs_to_dict(r)["id"]) for r in results]
    return [_key_bytes(k) for k in list(reply)[1:]]


def _key_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")


async def sample_vectors(
    servers: Servers,
    schema: IndexSchema,
    field: VectorField,
    keys: Sequence[bytes] | Sequence[str],
) -> np.ndarray:
    """The stored vectors of ``field`` in ``keys`` as a float array (n, dims); read-only
    (on a cluster each key asked of the primary holding it)."""
    dims, datatype = field.attrs.dims, field.attrs.datatype
    rows: list[np.ndarray] = []
    names = [k if isinstance(k, bytes) else k.encode() for k in keys]
    if schema.storage_type == "hash":
        for raw in await hash_field_of_each(servers, names, field.path or field.name):
            if isinstance(raw, bytes) and len(raw) == dims * DATATYPE_BYTES[datatype]:
                rows.append(decode_stored(raw, datatype, dims).astype(np.float64))
    else:
        path = field.path or default_json_path(field.name)
        for raw in await json_path_of_each(servers, names, path):
            if not isinstance(raw, (bytes, str)):
                continue
            values = json.loads(raw)
            if path.startswith("$") and isinstance(values, list) and values:
                values = values[0]
            if isinstance(values, list) and len(values) == dims:
                rows.append(np.asarray(values, dtype=np.float64))
    if not rows:
        return np.zeros((0, dims), dtype=np.float64)
    return np.vstack(rows)


async def other_indexes(client: aioredis.Redis, exclude: str) -> list[OtherIndex]:
    """Every other index on the server, with its storage type and prefixes."""
    found: list[OtherIndex] = []
    for name in await list_indexes(client):
        if name == exclude:
            continue
        try:
            schema = schema_from_ft_info(await ft_info(client, name))
        except BadInputError:
            continue  # dropped meanwhile
        found.append(
            OtherIndex(name=name, storage_type=schema.storage_type, prefixes=schema.prefixes)
        )
    return found


def renamed(schema: IndexSchema, name: str) -> IndexSchema:
    """``schema`` under the name users query (FT.INFO on an alias reports the index's own)."""
    if schema.name == name:
        return schema
    return msgspec.structs.replace(schema, index=msgspec.structs.replace(schema.index, name=name))


def previous_encodings_from(path: str | Path | None) -> dict[str, Encoding]:
    """Encodings an earlier plan wrote, by the field name they produced."""
    if path is None:
        return {}
    plan = MigrationPlan.load(path)
    return {vc.field: vc.encoding for vc in plan.vector_changes if vc.encoding is not None}


class AsyncMigrationPlanner:
    """Makes migration plans from a live index and a patch or a target schema."""

    def __init__(
        self,
        *,
        key_sample_size: int = KEY_SAMPLE_SIZE,
        vector_sample_size: int = VECTOR_SAMPLE_SIZE,
    ) -> None:
        self.key_sample_size = key_sample_size
        self.vector_sample_size = vector_sample_size

    async def create_plan(
        self,
        index_name: str,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        schema_patch_path: str | Path | None = None,
        schema_patch: SchemaPatch | None = None,
        target_schema_path: str | Path | None = None,
        target_schema: IndexSchema | None = None,
        previous_plan_path: str | Path | None = None,
        force: bool = False,
        overlap_checked_elsewhere: list[str] | None = None,
        mode: str | None = None,
        aliases: Sequence[str] = (),
        keep_shadow_field: bool = False,
    ) -> MigrationPlan:
        """Snapshot ``index_name``, merge the requested change, and return the plan.

        Give one of ``schema_patch_path``, ``schema_patch``, ``target_schema_path`` or
        ``target_schema``. Nothing on the server is changed. ``mode`` is ``online`` or
        ``drop_recreate``; by default online wherever no document needs rewriting. Indexes
        named in
        ``overlap_checked_elsewhere`` do not count as sharing keys (a batch checks its
        own members against each other).

        ``aliases`` names aliases of the index to move to the target (where the server
        cannot list them, FT.ALIASLIST being search 8.10+); each must point at the index,
        else BadInputError.

        ``keep_shadow_field``: an online re-encoding stops after its cut-over, the index
        reading the shadow fields (default: it finishes, rewriting the originals in place).
        """
        given = [
            x
            for x in (schema_patch_path, schema_patch, target_schema_path, target_schema)
            if x is not None
        ]
        if len(given) != 1:
            raise BadInputError(
                "give exactly one of a schema patch or a target schema (file or object)"
            )
        if schema_patch_path is not None:
            schema_patch = SchemaPatch.load(schema_patch_path)
        if target_schema_path is not None:
            target_schema = IndexSchema.load(target_schema_path)
        if schema_patch is not None and schema_patch.source_index not in (None, index_name):
            raise BadInputError(
                f"the schema patch is for index {schema_patch.source_index!r}, not {index_name!r}"
            )
        previous = previous_encodings_from(previous_plan_path)
        async with connect(redis_url, redis_client) as client:
            await refuse_cluster(client)  # a cluster passes only with the search coordinator
            async with primaries_of(client) as cluster:
                return await self._plan(
                    client,
                    cluster,
                    index_name,
                    schema_patch,
                    target_schema,
                    previous,
                    force,
                    set(overlap_checked_elsewhere or ()),
                    mode,
                    aliases,
                    keep_shadow_field,
                )

    async def estimate(
        self,
        plan: MigrationPlan,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        aof_enabled: bool = False,
        quality_queries: int = QUALITY_QUERIES,
    ) -> MigrationEstimate:
        """Disk, memory and AOF costs of ``plan`` and a recall@10 forecast; writes nothing.

        The forecast takes ``quality_queries`` stored vectors at random as queries and
        searches them, exactly, among every stored vector of the index, before and after
        re-encoding (the vectors are streamed in batches: memory stays bounded; the
        numpy work runs in a worker thread).
        """
        async with connect(redis_url, redis_client) as client, primaries_of(client) as cluster:
            await refuse_cluster(client)  # a cluster passes only with the search coordinator
            nodes = list(cluster.clients.values()) if cluster is not None else [client]
            dataset = 0
            for node in nodes:
                memory = await node.info("memory")
                dataset += int(memory.get("used_memory_dataset", 0))
            forecasts: dict[str, Any] = {}
            lossy = [vc for vc in plan.vector_changes if vc.lossy]
            if lossy:
                try:
                    await sample_keys(client, plan.source.index_name, 1)
                    present = True
                except rexc.ResponseError as exc:
                    if cluster_reply(exc):
                        raise
                    present = False  # the source index is gone (already migrated)
                if present:
                    forecasts = await forecast_quality(
                        client, plan, lossy, queries=quality_queries, cluster=cluster
                    )
        return build_estimate(
            plan,
            forecasts=forecasts,
            dataset_bytes=dataset,
            average_key_bytes=average_key_bytes(plan.source.keyspace.key_sample),
            aof_enabled=aof_enabled,
        )

    async def preflight(
        self,
        plan: MigrationPlan,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        command: Command = "apply",
        backup_dir: str | Path | None = None,
        allow_eviction: bool = False,
        scan_data: bool = True,
    ) -> Preflight:
        """The checks ``command`` (apply or rollback) would run for ``plan`` now, as a
        checklist; writes nothing. ``scan_data`` also counts malformed vectors (reads
        every key's vector length)."""
        async with connect(redis_url, redis_client) as client:
            return await preflight(
                client,
                plan,
                command,
                backup_dir=Path(backup_dir) if backup_dir is not None else None,
                allow_eviction=allow_eviction,
                scan_data=scan_data,
            )

    async def _plan(
        self,
        client: aioredis.Redis,
        cluster: ClusterConnections | None,
        index_name: str,
        patch: SchemaPatch | None,
        target: IndexSchema | None,
        previous: dict[str, Encoding],
        force: bool,
        overlap_checked_elsewhere: set[str],
        mode: str | None,
        aliases: Sequence[str] = (),
        keep_shadow_field: bool = False,
    ) -> MigrationPlan:
        servers: Servers = cluster if cluster is not None else client
        capabilities = await server_capabilities(client)
        described = await read_schema_and_stats(client, index_name)
        physical = described.schema.name  # differs when index_name is an alias
        source = renamed(described.schema, index_name)
        # parameters the server does not report: the values an earlier run recorded
        source, unreported = await recall_unreported(
            cluster_route(cluster) if cluster is not None else client,
            index_name,
            source,
            described.unreported,
        )
        notes = target_schema_notes(target) if target is not None else []
        user_aliases, aliases_listed = await plan_aliases(client, index_name, physical, aliases)
        if patch is None:
            assert target is not None
            patch = diff_schemas(source, target)
        others = [
            o
            for o in await other_indexes(client, physical)
            if o.name not in overlap_checked_elsewhere
        ]
        keys = await sample_keys(client, index_name, self.key_sample_size)
        samples: dict[str, Any] = {}
        wanted = _fields_needing_samples(source, patch)
        if wanted:
            sample_keys_for_vectors = await sample_keys(client, index_name, self.vector_sample_size)
            for field in source.vector_fields:
                if field.name in wanted:
                    samples[field.name] = await sample_vectors(
                        servers, source, field, sample_keys_for_vectors
                    )
        on_cluster = cluster is not None
        # a cluster's memory is each primary's: the preflight judges it per primary
        room = await memory_room(client) if not on_cluster else None
        plan = build_plan(
            memory_room=room,
            source_schema=source,
            source_stats=described.stats,
            key_sample=[key_text(k) for k in keys],
            capabilities=capabilities,
            patch=patch,
            other_indexes=others,
            vector_samples=samples,
            previous_encodings=previous,
            force=force,
            mode=mode,
            physical_index=physical,
            aliases=user_aliases,
            aliases_listed=aliases_listed,
            unreported=unreported,
            keep_shadow_field=keep_shadow_field,
            online_reencode_unavailable=ON_A_CLUSTER if on_cluster else None,
        )
        data = await malformed_vectors(servers, plan)
        if data.status != "pass":  # counted over every key: the plan says so
            notes.append(f"data: {data.detail}")
        if on_cluster and isinstance(plan.mode, Online):
            # no MULTI on a coordinator cluster: the cut-over goes one command at a time
            order = (
                ALIAS_THEN_DROP
                if physical != index_name or capabilities.search_version < (8, 0, 0)
                else DROP_THEN_ALIAS  # search 8 refuses an alias named like an index
            )
            notes.append(cut_over_window_sentence(order, None))
        if notes:
            plan = seal_plan(msgspec.structs.replace(plan, warnings=[*plan.warnings, *notes]))
        return plan


async def memory_room(client: aioredis.Redis) -> MemoryRoom | None:
    """The server's memory as INFO reports it; None where INFO is not allowed."""
    try:
        memory = await client.info("memory")
    except rexc.ResponseError:
        return None
    return MemoryRoom(
        used=int(memory.get("used_memory", 0) or 0),
        maxmemory=int(memory.get("maxmemory", 0) or 0),
        system=int(memory.get("total_system_memory", 0) or 0),
    )


def _fields_needing_samples(source: IndexSchema, patch: SchemaPatch) -> set[str]:
    """Source vector fields whose datatype the patch changes (they need calibration data)."""
    names: set[str] = set()
    for update in patch.changes.update_fields:
        attrs = update.all_attrs
        if "datatype" in attrs:
            field = source.field(update.name)
            if isinstance(field, VectorField) and str(attrs["datatype"]).lower() != (
                field.attrs.datatype
            ):
                names.add(field.name)
    return names
