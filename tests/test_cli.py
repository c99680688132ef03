"""The command line, run as a user runs it: a subprocess, real server, exit codes and output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redismigrate.demo import sample_schema
from redismigrate.render import ft_create_args
from redismigrate.server import EmbeddedRedis

SECRET = "s3cr3t-Pa55"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def sample_index(sync_client: redis.Redis, ns: str) -> str:
    schema = sample_schema(name=f"{ns}_idx", dims=8, prefix=f"{ns}:")
    sync_client.execute_command(*ft_create_args(schema))
    sync_client.hset(f"{ns}:1", mapping={"title": "hello", "category": "books", "price": 3})
    return schema.name


def test_index_list_shows_the_index_and_its_json_is_parseable(
    redis_url: str, sample_index: str
) -> None:
    table = cli("index", "list", "--url", redis_url)
    assert table.returncode == 0, table.stderr
    assert sample_index in table.stdout
    as_json = cli("index", "list", "--url", redis_url, "--json")
    assert as_json.returncode == 0, as_json.stderr
    rows = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert rows[sample_index]["storage_type"] == "hash"


def test_index_info_json_gives_the_schema_and_counters(redis_url: str, sample_index: str) -> None:
    result = cli("index", "info", "--index", sample_index, "--url", redis_url, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    from redismigrate.schema import IndexSchema

    schema = IndexSchema.from_dict(data["schema"])
    assert schema.same_index_as(sample_schema(name=sample_index, dims=8, prefix=schema.prefixes[0]))
    assert data["stats"]["num_docs"] == 1
    table = cli("index", "info", "--index", sample_index, "--url", redis_url)
    assert table.returncode == 0 and "embedding" in table.stdout and "hnsw" in table.stdout


def test_unknown_index_is_one_line_exit_2(redis_url: str) -> None:
    result = cli("index", "info", "--index", "no_such_index_xyz", "--url", redis_url)
    assert_one_line_error(result, 2, "no_such_index_xyz", "does not exist")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("localhost:6379", "needs a scheme"),
        ("http://localhost:6379", "scheme 'http'"),
        ("redis://localhost:99999", "out of range"),
        ("redis://:6379", "no host"),
        ("redis://localhost:6379/abc", "database"),
    ],
)
def test_malformed_urls_are_one_line_exit_2(url: str, needle: str) -> None:
    result = cli("index", "list", "--url", url)
    assert_one_line_error(result, 2, "malformed Redis URL", needle)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_answered_within_5_seconds() -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    result = cli("index", "list", "--url", url)
    assert time.monotonic() - start < 5
    assert_one_line_error(result, 2, "cannot reach")
    assert SECRET not in result.stderr + result.stdout


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_fails_within_5_seconds(silent_server: int) -> None:
    start = time.monotonic()
    result = cli("index", "list", "--url", f"redis://:{SECRET}@127.0.0.1:{silent_server}")
    elapsed = time.monotonic() - start
    assert_one_line_error(result, 2, "cannot reach")
    assert elapsed < 6.5  # 4 s timeout plus interpreter start-up
    assert SECRET not in result.stderr + result.stdout


def test_wrong_password_never_shows_the_password(redis_url: str) -> None:
    if "@" in redis_url:
        pytest.skip("the test server already uses credentials")
    with_password = redis_url.replace("redis://", f"redis://someone:{SECRET}@")
    result = cli("index", "list", "--url", with_password)
    assert_one_line_error(result, 2, "someone:***@")
    assert SECRET not in result.stderr + result.stdout


def test_help_never_shows_a_password_from_the_environment() -> None:
    result = cli("index", "list", "--help", env={"REDIS_URL": f"redis://:{SECRET}@localhost:1"})
    assert result.returncode == 0
    assert SECRET not in result.stdout + result.stderr


def test_server_without_the_search_module_is_one_line_exit_2() -> None:
    with EmbeddedRedis(modules=False) as plain:
        assert plain.info is not None
        for args in (["index", "list"], ["index", "info", "--index", "x"]):
            result = cli(*args, "--url", plain.info.url)
            assert_one_line_error(result, 2, "no search module")


def test_usage_errors_are_one_line_exit_2() -> None:
    result = cli("index", "info", "--url", "redis://localhost:1")
    assert_one_line_error(result, 2, "--index")
    result = cli("no-such-command")
    assert_one_line_error(result, 2, "no-such-command")


def _started_url(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return next(word for word in result.stdout.split() if word.startswith("redis://"))


def _listed(env: dict[str, str]) -> dict[str, Any]:
    result = cli("server", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_server_start_and_stop_from_the_command_line(tmp_path: Path) -> None:
    env = {"REDISMIGRATE_STATE_DIR": str(tmp_path)}
    url = _started_url(cli("server", "start", env=env))
    try:
        client = redis.Redis.from_url(url)
        assert client.ping()
        modules = [{k.decode(): v for k, v in m.items()} for m in client.module_list()]
        assert {b"search", b"ReJSON"} <= {m["name"] for m in modules}
        client.close()
        port = url.rsplit(":", 1)[1]
        again = cli("server", "start", "--port", port, env=env)
        assert_one_line_error(again, 2, f"port {port} is taken", f"server stop --port {port}")
    finally:
        stopped = cli("server", "stop", env=env)  # the only one: no option needed
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped" in stopped.stdout
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, retry=None, socket_connect_timeout=1).ping()


def test_several_servers_start_list_and_stop(tmp_path: Path) -> None:
    env = {"REDISMIGRATE_STATE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "redismigrate", "server", "start"]
    full_env = {**os.environ, **env}
    starts = [  # two at once: two servers, a port each
        subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        outs = [proc.communicate(timeout=60)[0] for proc in starts]
        assert [proc.returncode for proc in starts] == [0, 0], outs
        urls = sorted(
            (next(w for w in out.split() if w.startswith("redis://")) for out in outs),
            key=lambda u: int(u.rsplit(":", 1)[1]),
        )
        first, second = (int(u.rsplit(":", 1)[1]) for u in urls)
        assert first != second

        listed = _listed(env)
        assert [s["url"] for s in listed["servers"]] == urls
        assert all(s["answering"] for s in listed["servers"]) and listed["removed"] == []
        for entry in listed["servers"]:
            assert entry["dir"] == str(tmp_path / "servers" / str(entry["port"]))
            assert entry["started_at"] and entry["pid"] > 0
        text = cli("server", "list", env=env)
        assert text.returncode == 0, text.stderr
        assert all(url in text.stdout for url in urls)
        assert "2 server(s)" in text.stdout and "answers" in text.stdout

        refused = cli("server", "stop", env=env)  # two running, no option
        assert_one_line_error(refused, 2, str(first), str(second), "--port", "--all")
        assert len(_listed(env)["servers"]) == 2  # nothing stopped

        stopped = cli("server", "stop", "--port", str(second), env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert f"Stopped the server at {urls[1]}" in stopped.stdout
        assert [s["url"] for s in _listed(env)["servers"]] == [urls[0]]

        last = cli("server", "stop", env=env)  # one left: no option needed
        assert last.returncode == 0, last.stderr
        assert f"Stopped the server at {urls[0]}" in last.stdout
        assert _listed(env) == {"servers": [], "removed": []}
        empty = cli("server", "list", env=env)
        assert "No server started by redismigrate is running." in empty.stdout
    finally:
        for proc in starts:
            if proc.poll() is None:
                proc.kill()
        cli("server", "stop", "--all", env=env)


def test_server_list_removes_a_killed_servers_record(tmp_path: Path) -> None:
    env = {"REDISMIGRATE_STATE_DIR": str(tmp_path)}
    url = _started_url(cli("server", "start", env=env))
    try:
        (entry,) = _listed(env)["servers"]
        os.kill(entry["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            except redis.ConnectionError:
                break
            time.sleep(0.05)
        listed = cli("server", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert f"Removed the record of the server at {url}" in listed.stdout
        assert "no longer running" in listed.stdout
        assert "No server started by redismigrate is running." in listed.stdout
        assert _listed(env) == {"servers": [], "removed": []}  # said once
    finally:
        cli("server", "stop", "--all", env=env)


def test_demo_runs_the_whole_job_on_its_own_server() -> None:
    result = cli("demo", "--docs", "300", "--dims", "16", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "demo_idx" in result.stdout
    assert "300" in result.stdout
    assert "Server stopped." in result.stdout
    assert "Result: succeeded" in result.stdout and "float32 -> float16" in result.stdout
    assert "Validation: passed" in result.stdout


def test_python_dash_m_and_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("redismigrate ")
