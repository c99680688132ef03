"""The generated blocking API (redismigrate.sync), its portal runtime and its generator."""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import inspect
import subprocess
import sys
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aconnection
import redis.cluster

import redismigrate.sync
from redismigrate import _portal
from redismigrate.aio.indexes import IndexDescription
from redismigrate.aio.inspector import AsyncIndexInspector
from redismigrate.errors import BadInputError, IndexNotFound
from redismigrate.sync import IndexInspector

ROOT = Path(__file__).resolve().parent.parent
GEN_SYNC = ROOT / "tools" / "gen_sync.py"
SYNC_FILE = ROOT / "redismigrate" / "sync.py"


@functools.cache
def load_generator() -> ModuleType:
    """tools/gen_sync.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_sync", GEN_SYNC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def index(sync_client: redis.Redis, ns: str) -> str:
    """A small hash index named after the test's namespace, with one document."""
    sync_client.execute_command(
        "FT.CREATE", f"{ns}_x", "ON", "HASH", "PREFIX", "1", f"{ns}:", "SCHEMA", "t", "TEXT"
    )
    sync_client.hset(f"{ns}:1", mapping={"t": "hello"})
    return f"{ns}_x"


def check_description(description: IndexDescription, index: str, ns: str) -> None:
    assert description.schema.name == index
    assert description.schema.prefixes == [f"{ns}:"]
    assert description.schema.field_names == ["t"]


def caught(call: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


# --- the blocking API against a real server ---------------------------------------------


def test_lists_and_describes_an_index(redis_url: str, index: str, ns: str) -> None:
    inspector = IndexInspector()
    assert index in inspector.list_indexes(redis_url=redis_url)
    check_description(inspector.describe(index, redis_url=redis_url), index, ns)
    assert inspector.capabilities(redis_url=redis_url).search_version >= (2, 0, 0)


async def test_works_inside_a_running_event_loop(redis_url: str, index: str, ns: str) -> None:
    asyncio.get_running_loop()  # this test runs on an event loop ...
    coroutine = AsyncIndexInspector().list_indexes(redis_url=redis_url)
    try:
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(coroutine)  # ... where asyncio.run refuses to work
    finally:
        coroutine.close()
    inspector = IndexInspector()  # ... and the blocking API works all the same
    assert index in inspector.list_indexes(redis_url=redis_url)
    check_description(inspector.describe(index, redis_url=redis_url), index, ns)


def test_works_from_several_threads_at_once(redis_url: str, index: str, ns: str) -> None:
    inspector = IndexInspector()

    def work(_: int) -> IndexDescription:
        assert index in inspector.list_indexes(redis_url=redis_url)
        return inspector.describe(index, redis_url=redis_url)

    with ThreadPoolExecutor(max_workers=8) as pool:
        descriptions = list(pool.map(work, range(24)))
    for description in descriptions:
        check_description(description, index, ns)
        assert description.schema == descriptions[0].schema


async def test_threads_and_the_event_loop_together(redis_url: str, index: str) -> None:
    inspector = IndexInspector()
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(loop.run_in_executor(None, lambda: inspector.list_indexes(redis_url=redis_url))
          for _ in range(6))
    )  # fmt: skip
    assert all(index in names for names in results)
    assert index in inspector.list_indexes(redis_url=redis_url)


async def caught_async(call: Callable[[], Awaitable[object]]) -> BaseException:
    with pytest.raises(Exception) as info:
        await call()
    return info.value


async def test_errors_come_through_unchanged(redis_url: str, ns: str) -> None:
    inspector, ainspector = IndexInspector(), AsyncIndexInspector()
    missing = f"{ns}_nothing_here"

    error = caught(lambda: inspector.describe(missing, redis_url=redis_url))
    expected = await caught_async(lambda: ainspector.describe(missing, redis_url=redis_url))
    assert type(error) is IndexNotFound
    assert (type(error), str(error)) == (type(expected), str(expected))
    assert repr(missing) in str(error)

    for bad_url in ("localhost:6379", "redis://host:99999", "http://localhost"):
        error = caught(lambda url=bad_url: inspector.list_indexes(redis_url=url))
        expected = await caught_async(lambda url=bad_url: ainspector.list_indexes(redis_url=url))
        assert type(error) is BadInputError
        assert str(error) == str(expected)
        assert str(error).startswith("malformed Redis URL")


def test_a_sync_redis_client_is_accepted(
    redis_url: str, index: str, ns: str, sync_client: redis.Redis
) -> None:
    name = f"{ns}-caller"
    caller = redis.Redis.from_url(redis_url, client_name=name)
    try:
        inspector = IndexInspector()
        assert index in inspector.list_indexes(redis_client=caller)
        check_description(inspector.describe(index, redis_client=caller), index, ns)
        with pytest.raises(IndexNotFound):
            inspector.describe(f"{ns}_nothing_here", redis_client=caller)

        # The async twin has the caller's settings (its client name here) ...
        twin = _portal.to_async_client(caller)
        assert _portal.run_sync(twin.client_getname) == name
        # ... and every twin's connection is closed once its call returns,
        connected = [c["name"] for c in sync_client.client_list()]
        assert name not in connected
        # ... while the caller's own client stays usable (the sync API never closes it).
        assert caller.ping()
    finally:
        caller.close()


def test_an_async_redis_client_is_refused(redis_url: str) -> None:
    foreign = aioredis.Redis.from_url(redis_url)  # never connected: nothing to close
    inspector = IndexInspector()
    with pytest.raises(BadInputError, match=r"redis\.asyncio\.Redis"):
        inspector.list_indexes(redis_client=foreign)  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match=r"redis\.asyncio\.Redis"):
        inspector.describe("anything", redis_client=foreign)  # type: ignore[arg-type]


# --- the async twin of a sync client (no connection is made) ----------------------------


def test_twin_of_a_unix_socket_client() -> None:
    twin = _portal.to_async_client(
        redis.Redis(unix_socket_path="/tmp/redis.sock", db=3, password="pw", socket_timeout=7)
    )
    pool = twin.connection_pool
    assert pool.connection_class is aconnection.UnixDomainSocketConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["path"], kwargs["db"], kwargs["password"]) == ("/tmp/redis.sock", 3, "pw")
    assert kwargs["socket_timeout"] == 7
    assert "host" not in kwargs


def test_twin_of_a_tls_client() -> None:
    sync = redis.Redis.from_url("rediss://user:pw@example.com:6380/2?ssl_cert_reqs=none")
    pool = _portal.to_async_client(sync).connection_pool
    assert pool.connection_class is aconnection.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("example.com", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("user", "pw")
    assert kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["decode_responses"] is False

    built = redis.Redis(host="h", ssl=True, ssl_ca_certs="/ca.pem", ssl_check_hostname=False)
    kwargs = _portal.to_async_client(built).connection_pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_check_hostname"]) == ("/ca.pem", False)

    ocsp = redis.Redis(host="h", ssl=True, ssl_validate_ocsp=True)
    with pytest.raises(BadInputError, match="OCSP"):
        _portal.to_async_client(ocsp)


def test_twin_keeps_the_pool_kind_and_size() -> None:
    blocking = redis.Redis(
        connection_pool=redis.BlockingConnectionPool(host="h", max_connections=5, timeout=3)
    )
    pool = _portal.to_async_client(blocking).connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert (pool.max_connections, pool.timeout) == (5, 3)
    plain = redis.Redis(host="h", max_connections=9)
    pool = _portal.to_async_client(plain).connection_pool
    assert not isinstance(pool, aioredis.BlockingConnectionPool)
    assert pool.max_connections == 9
    assert _portal.to_async_client(None) is None


# --- the portal --------------------------------------------------------------------------


def test_the_portal_is_shared_and_restarts_when_it_died(redis_url: str) -> None:
    inspector = IndexInspector()
    inspector.list_indexes(redis_url=redis_url)
    portal = _portal._state.portal
    assert portal is not None
    inspector.capabilities(redis_url=redis_url)
    assert _portal._state.portal is portal  # one portal serves every call

    portal.call(portal.stop)  # its loop ends behind our back
    assert isinstance(inspector.list_indexes(redis_url=redis_url), list)
    assert _portal._state.portal is not portal

    _portal.close_portal()  # what atexit runs
    assert _portal._state.portal is None
    assert isinstance(inspector.list_indexes(redis_url=redis_url), list)


def test_a_keyboard_interrupt_in_a_call_leaves_the_portal_running() -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt("stop")

    async def answer() -> int:
        return 42

    assert _portal.run_sync(answer) == 42
    portal = _portal._state.portal
    with pytest.raises(KeyboardInterrupt, match="stop"):
        _portal.run_sync(interrupted)
    assert _portal.run_sync(answer) == 42
    assert _portal._state.portal is portal


def test_the_blocking_api_refuses_to_wait_on_its_own_loop() -> None:
    async def nested() -> list[str]:
        return IndexInspector().list_indexes(redis_url="redis://localhost")

    with pytest.raises(RuntimeError, match="own portal loop"):
        _portal.run_sync(nested)


# --- the generator -----------------------------------------------------------------------


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_SYNC), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )


def test_the_generated_file_is_current() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""


def test_a_stale_generated_file_fails_the_check(tmp_path: Path) -> None:
    before = SYNC_FILE.read_bytes()
    stale = tmp_path / "sync.py"
    stale.write_text(
        SYNC_FILE.read_text(encoding="utf-8").replace(
            "Names of every index on the server, sorted.", "Names of the indexes."
        ),
        encoding="utf-8",
    )
    result = run_generator("--check", "--output", str(stale))
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and "sync.py is out of date" in lines[0], lines
    assert str(tmp_path.name) in lines[0]

    missing = tmp_path / "absent.py"
    result = run_generator("--check", "--output", str(missing))
    assert result.returncode == 1
    assert "absent.py is missing" in result.stderr

    # the check function itself, in process
    generator = load_generator()
    assert generator.check(stale) == 1
    assert generator.check(SYNC_FILE) == 0
    assert SYNC_FILE.read_bytes() == before  # the real file is never touched


def test_the_generator_output_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    assert run_generator("--output", str(first)).returncode == 0
    assert run_generator("--output", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes() == SYNC_FILE.read_bytes()


def test_the_generated_file_carries_the_header() -> None:
    lines = SYNC_FILE.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# DO NOT EDIT: generated by tools/gen_sync.py from ")
    assert "# Run `python tools/gen_sync.py` to regenerate." in lines[:4]


def _mirrored() -> list[tuple[type, type]]:
    pairs = []
    for module_name, class_name in load_generator().ASYNC_CLASSES:
        module = importlib.import_module(module_name)
        sync_class = getattr(redismigrate.sync, class_name.removeprefix("Async"))
        pairs.append((getattr(module, class_name), sync_class))
    return pairs


def _public_coroutines(cls: type) -> list[str]:
    return sorted(
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    )


@pytest.mark.parametrize(("async_class", "sync_class"), _mirrored())
def test_signatures_and_docstrings_match(async_class: type, sync_class: type) -> None:
    public_sync = sorted(
        name for name, value in vars(sync_class).items() if callable(value) and name[0] != "_"
    )
    assert public_sync == _public_coroutines(async_class)
    for name in ["__init__", *public_sync]:
        async_method, sync_method = getattr(async_class, name), getattr(sync_class, name)
        assert not inspect.iscoroutinefunction(sync_method)
        async_sig = inspect.signature(async_method, eval_str=False)
        sync_sig = inspect.signature(sync_method, eval_str=False)
        # The one intended difference: the blocking API takes a blocking client (of one
        # server or of a cluster).
        expected = [
            p.replace(annotation=p.annotation.replace("AsyncRedisClient", "SyncRedisClient"))
            if p.name == "redis_client"
            else p
            for p in async_sig.parameters.values()
        ]
        assert list(sync_sig.parameters.values()) == expected, name
        assert sync_sig.return_annotation == async_sig.return_annotation, name
        assert inspect.getdoc(sync_method) == inspect.getdoc(async_method), name
        assert sync_method.__doc__ == async_method.__doc__, name
        # every annotation resolves where the blocking API lives
        hints = typing.get_type_hints(sync_method)
        if "redis_client" in sync_sig.parameters:
            assert hints["redis_client"] == (redis.Redis | redis.cluster.RedisCluster | None)
    assert sync_class.__doc__ == async_class.__doc__
