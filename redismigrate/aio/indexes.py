"""Read and create index definitions on a live server."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.aio.topology import cluster_error
from redismigrate.capabilities import ServerCapabilities, parse_module_version
from redismigrate.errors import IndexNotFound, SearchModuleMissing, ServerReplyError
from redismigrate.ftinfo import (
    IndexStats,
    pairs_to_dict,
    schema_from_ft_info,
    stats_from_ft_info,
    text,
    unreported_in_ft_info,
)
from redismigrate.render import ft_create_args
from redismigrate.schema import (
    IndexSchema,
    TextField,
    UnreportedAttribute,
    VectorField,
    unreported_map,
    with_unreported_from,
)

_SEARCH_MODULE_NAMES = ("search", "ft", "searchlight")
_JSON_MODULE_NAMES = ("rejson", "redisjson")
_UNKNOWN_INDEX = re.compile(r"unknown index|no such index|not found", re.IGNORECASE)
_UNKNOWN_COMMAND = re.compile(r"unknown command", re.IGNORECASE)


def search_module_missing() -> SearchModuleMissing:
    return SearchModuleMissing(
        "the server has no search module (RediSearch / Redis Query Engine); "
        "use Redis Stack or Redis 8"
    )


class IndexDescription(msgspec.Struct, frozen=True, kw_only=True):
    """A live index: its schema and its FT.INFO counters.

    ``unreported`` lists the vector parameters the server did not report (the schema
    holds None for each, or the value an earlier redismigrate run recorded, named there).
    """

    schema: IndexSchema
    stats: IndexStats
    # names that are aliases of this index (the schema carries the index's own name)
    aliases: list[str] = []
    unreported: list[UnreportedAttribute] = []

    def comparable_to(self, reference: IndexSchema) -> IndexSchema:
        """The live schema with what the server did not report taken from ``reference``:
        compared with ``reference``, only what the server reports counts."""
        return with_unreported_from(self.schema, unreported_map(self.unreported), reference)

    def reports_same_index_as(self, reference: IndexSchema) -> bool:
        """True when everything the server reports equals ``reference``."""
        return self.comparable_to(reference).same_index_as(reference)


async def server_capabilities(client: aioredis.Redis) -> ServerCapabilities:
    """Versions of Redis and its search/JSON modules; SearchModuleMissing when absent."""
    search: tuple[int, int, int] | None = None
    json_version: tuple[int, int, int] | None = None
    try:
        modules = await execute(client, "MODULE", "LIST")
    except rexc.ResponseError:
        modules = []
    for module in modules or []:
        entry = pairs_to_dict(module)
        name = text(entry.get("name", "")).lower()
        version = int(entry.get("ver", 0))
        if name in _SEARCH_MODULE_NAMES:
            search = parse_module_version(version)
        elif name in _JSON_MODULE_NAMES:
            json_version = parse_module_version(version)
    info = await client.info("server")
    redis_version = text(info.get("redis_version", "unknown"))
    if search is None:
        # MODULE LIST can be disabled (managed services); FT._LIST still tells.
        try:
            await execute(client, "FT._LIST")
        except rexc.ResponseError as exc:
            if _UNKNOWN_COMMAND.search(str(exc)):
                raise search_module_missing() from None
            raise
        major = int(redis_version.split(".")[0]) if redis_version[:1].isdigit() else 0
        search = (major, 0, 0) if major >= 8 else (2, 0, 0)
    return ServerCapabilities(
        redis_version=redis_version, search_version=search, json_version=json_version
    )


async def list_indexes(client: aioredis.Redis) -> list[str]:
    """Names of every index on the server, sorted."""
    try:
        names = await execute(client, "FT._LIST")
    except rexc.ResponseError as exc:
        if _UNKNOWN_COMMAND.search(str(exc)):
            raise search_module_missing() from None
        raise
    return sorted(text(n) for n in names)


async def known_aliases(client: aioredis.Redis) -> dict[str, str]:
    """``{alias: index}`` for the aliases online migrations make (``<name>`` pointing at
    ``<name>__rm<n>``); the server has no command that lists aliases."""
    found: dict[str, str] = {}
    for name in await list_indexes(client):
        match = re.match(r"^(.+)__rm\d+$", name)
        if not match:
            continue
        try:
            reply = await ft_info(client, match.group(1))
        except IndexNotFound:
            continue
        if text(pairs_to_dict(reply).get("index_name", "")) == name:
            found[match.group(1)] = name
    return found


async def ft_info(client: aioredis.Redis, index_name: str) -> Any:
    """The raw FT.INFO reply; IndexNotFound when there is no such index."""
    try:
        return await execute(client, "FT.INFO", index_name)
    except rexc.ResponseError as exc:
        message = str(exc)
        redirected = cluster_error(exc)  # MOVED: the index name's slot is on another node
        if redirected is not None:
            raise redirected from None
        if _UNKNOWN_COMMAND.search(message):
            raise search_module_missing() from None
        if _UNKNOWN_INDEX.search(message):
            raise IndexNotFound(f"index {index_name!r} does not exist on this server") from None
        raise ServerReplyError(f"FT.INFO {index_name!r} failed: {message}") from None


def escape_query_name(name: str) -> str:
    """A field name escaped for use after ``@`` in a query."""
    return "".join(ch if ch.isalnum() or ch == "_" else "\\" + ch for ch in name)


async def _is_phonetic(client: aioredis.Redis, index_name: str, field_name: str) -> bool:
    query = f"@{escape_query_name(field_name)}:(probe)=>{{$phonetic:true}}"
    try:
        await execute(client, "FT.EXPLAIN", index_name, query)
    except rexc.ResponseError as exc:
        if "phonetic" in str(exc).lower():
            return False
        raise
    return True


# search 2.x names it FT.DEBUG; search 8 _FT.DEBUG, refused unless the server runs with
# enable-debug-command (and by ACL rules that leave it out, as managed services do)
_DEBUG_COMMANDS = ("FT.DEBUG", "_FT.DEBUG")


async def _vector_details(
    client: aioredis.Redis, index_name: str, field_name: str
) -> dict[str, Any] | None:
    """``FT.DEBUG VECSIM_INFO`` of one field (the parameters FT.INFO leaves out), or None
    where the server refuses it."""
    for command in _DEBUG_COMMANDS:
        try:
            reply = await execute(client, command, "VECSIM_INFO", index_name, field_name)
        except rexc.ResponseError:
            continue
        try:
            return pairs_to_dict(reply)
        except ServerReplyError:
            return None
    return None


async def read_schema_and_stats(client: aioredis.Redis, index_name: str) -> IndexDescription:
    """Read a live index's full schema (with what FT.INFO omits) and its counters."""
    raw = await ft_info(client, index_name)
    schema = schema_from_ft_info(raw)
    details: dict[str, dict[str, Any]] = {}
    for field in schema.fields:
        if isinstance(field, VectorField):
            found = await _vector_details(client, index_name, field.name)
            if found is not None:
                details[field.name] = found
    # Older servers leave PHONETIC out of FT.INFO; a query plan tells.
    phonetic: list[str] = []
    for field in schema.fields:
        if (
            isinstance(field, TextField)
            and field.attrs.phonetic_matcher is None
            and not field.attrs.no_index
            and await _is_phonetic(client, index_name, field.name)
        ):
            phonetic.append(field.name)
    if details or phonetic:
        schema = schema_from_ft_info(raw, vector_details=details, phonetic_fields=phonetic)
    aliases = [index_name] if schema.name != index_name else []
    return IndexDescription(
        schema=schema,
        stats=stats_from_ft_info(raw),
        aliases=aliases,
        unreported=unreported_in_ft_info(raw, vector_details=details),
    )


async def read_schema(client: aioredis.Redis, index_name: str) -> IndexSchema:
    """The live schema of ``index_name``."""
    return (await read_schema_and_stats(client, index_name)).schema


async def create_index(
    client: aioredis.Redis,
    schema: IndexSchema,
    *,
    index_name: str | None = None,
    skip_initial_scan: bool = False,
) -> None:
    """FT.CREATE ``schema`` (optionally under another name, optionally without the scan
    of existing documents)."""
    await execute(
        client,
        *ft_create_args(schema, index_name=index_name, skip_initial_scan=skip_initial_scan),
    )


async def drop_index(client: aioredis.Redis, index_name: str) -> None:
    """FT.DROPINDEX without DD: the documents stay."""
    await execute(client, "FT.DROPINDEX", index_name)
