"""The RPC tracker as a pool of devices: querying it with bounded waits, requesting sessions
without hanging, and starting a local tracker plus RPC servers as separate processes.

TVM's own client helpers can block for a long time: `rpc.connect_tracker` retries a refused
connection for 60 s, and `TrackerSession.request` waits forever when no server is registered
under the key.  Everything here talks to the tracker with socket timeouts instead, so that an
unreachable tracker or an empty key is reported within a bounded time, with a message that says
what to start.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from ..threads import configure_runtime_threads

if TYPE_CHECKING:  # pragma: no cover
    from tvm.rpc import RPCSession

# Wire constants of TVM's RPC protocol (tvm.rpc.base); duplicated so that querying a tracker does
# not need to import TVM (`gos-tvm rpc query` stays fast).
RPC_TRACKER_MAGIC = 0x2F271
_SUCCESS, _REQUEST, _SUMMARY, _PING = 0, 4, 6, 1


class DeviceUnavailableError(RuntimeError):
    """The tracker cannot be reached, or it holds no (free) server under the requested key."""


@dataclass
class TrackerStatus:
    """What a tracker holds.

    `servers` lists (address, key) of every registered server; `queues` maps each key to
    {'total', 'free', 'busy', 'pending'} (pending: client requests waiting for a server).
    """

    host: str
    port: int
    servers: list[tuple[str, str]] = field(default_factory=list)
    queues: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, key: str) -> int:
        """Number of servers registered under `key`."""
        return self.queues.get(key, {}).get("total", 0)

    def free(self, key: str) -> int:
        """Number of idle servers under `key`."""
        return self.queues.get(key, {}).get("free", 0)

    def to_json(self) -> dict:
        return {"tracker": f"{self.host}:{self.port}",
                "servers": [{"addr": a, "key": k} for a, k in self.servers], "keys": self.queues}

    def text(self) -> str:
        lines = [f"tracker {self.host}:{self.port}", "", "servers:"]
        if not self.servers:
            lines.append("  (none registered)")
        for addr, key in sorted(self.servers, key=lambda s: (s[1], s[0])):
            lines.append(f"  {addr:<24s} {key}")
        lines += ["", f"  {'key':<20s} {'total':>5s} {'free':>5s} {'busy':>5s} {'pending':>7s}"]
        for key in sorted(self.queues):
            q = self.queues[key]
            lines.append(f"  {key:<20s} {q['total']:>5d} {q['free']:>5d} {q['busy']:>5d} {q['pending']:>7d}")
        return "\n".join(lines)


def _send_json(sock: socket.socket, data) -> None:
    raw = json.dumps(data).encode("utf-8")
    sock.sendall(struct.pack("<i", len(raw)) + raw)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the tracker")
        buf += chunk
    return bytes(buf)


def _recv_json(sock: socket.socket):
    (size,) = struct.unpack("<i", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, size).decode("utf-8"))


def _start_hint(host: str, port: int) -> str:
    return f"start one with `gos-tvm rpc tracker --host {host} --port {port}` (see rpc/README.md)"


def connect_tracker_socket(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A socket that has completed the tracker handshake, or DeviceUnavailableError within ~timeout s."""
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as err:
        what = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise DeviceUnavailableError(
            f"RPC tracker at {host}:{port} is unreachable ({what}, waited at most {timeout:g} s); "
            + _start_hint(host, port)) from err
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        (magic,) = struct.unpack("<i", _recv_exact(sock, 4))
    except OSError as err:
        sock.close()
        raise DeviceUnavailableError(f"{host}:{port} accepted a connection but did not answer as an RPC tracker "
                                     f"within {timeout:g} s ({err})") from err
    if magic != RPC_TRACKER_MAGIC:
        sock.close()
        raise DeviceUnavailableError(f"{host}:{port} is not an RPC tracker (bad handshake)")
    return sock


def query_tracker(host: str, port: int, timeout: float = 5.0) -> TrackerStatus:
    """The tracker's registered servers and per-key queues; DeviceUnavailableError if unreachable."""
    sock = connect_tracker_socket(host, port, timeout)
    try:
        _send_json(sock, [_SUMMARY])
        reply = _recv_json(sock)
    except OSError as err:
        raise DeviceUnavailableError(f"RPC tracker at {host}:{port} did not answer a summary request "
                                     f"within {timeout:g} s ({err})") from err
    finally:
        sock.close()
    if reply[0] != _SUCCESS:
        raise DeviceUnavailableError(f"RPC tracker at {host}:{port} refused the summary request: {reply}")
    data = reply[1]
    status = TrackerStatus(host, int(port))
    for item in data.get("server_info", []):
        key = str(item.get("key", "")).split(":", 1)[-1]
        addr = ":".join(str(a) for a in item.get("addr", []))
        status.servers.append((addr, key))
    keys = set(data.get("queue_info", {})) | {k for _, k in status.servers}
    for key in keys:
        q = data.get("queue_info", {}).get(key, {"free": 0, "pending": 0})
        total = sum(1 for _, k in status.servers if k == key)
        status.queues[key] = {"total": total, "free": int(q["free"]), "busy": max(total - int(q["free"]), 0),
                              "pending": int(q["pending"])}
    return status


def require_servers(host: str, port: int, key: str, n: int = 1, timeout: float = 10.0) -> TrackerStatus:
    """Wait up to `timeout` s for at least `n` servers under `key`; DeviceUnavailableError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        status = query_tracker(host, port, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
        if status.count(key) >= n:
            return status
        if time.monotonic() >= deadline:
            held = ", ".join(f"{k} ({q['total']})" for k, q in sorted(status.queues.items()) if q["total"]) or "none"
            raise DeviceUnavailableError(
                f"RPC tracker at {host}:{port} has {status.count(key)} server(s) under key '{key}' "
                f"(needed {n}, waited {timeout:g} s); keys it holds: {held}. Start one with "
                f"`gos-tvm rpc server --tracker {host}:{port} --key {key}`")
        time.sleep(0.25)


def request_session(host: str, port: int, key: str, *, queue_timeout: float = 60.0,
                    session_timeout: float = 0.0, connect_timeout: float = 5.0) -> "RPCSession":
    """An RPC session with a server under `key`, obtained through the tracker.

    Waits at most `queue_timeout` s for a free server (TVM's client waits forever); a server that
    was handed out but cannot be reached (it died in the meantime) is skipped and another one is
    requested.  `session_timeout` (s, 0 = none) lets the server end a session that runs too long.
    Raises DeviceUnavailableError.
    """
    from tvm import rpc

    deadline = time.monotonic() + queue_timeout
    last_err: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = connect_tracker_socket(host, port, min(connect_timeout, max(remaining, 0.5)))
        try:
            sock.settimeout(max(remaining, 0.5))
            _send_json(sock, [_REQUEST, key, "", 1])
            reply = _recv_json(sock)
        except socket.timeout:
            sock.close()
            status = query_tracker(host, port, timeout=connect_timeout)
            detail = (f"no server registered under key '{key}'" if status.count(key) == 0
                      else f"{status.count(key)} server(s) under '{key}', none became free")
            raise DeviceUnavailableError(f"no RPC session under key '{key}' at {host}:{port} within "
                                         f"{queue_timeout:g} s: {detail}") from None
        except OSError as err:
            sock.close()
            last_err = err
            time.sleep(0.2)
            continue
        sock.close()
        if reply[0] != _SUCCESS:
            raise DeviceUnavailableError(f"tracker {host}:{port} refused a request for key '{key}': {reply}")
        url, sport, matchkey = reply[1]
        try:
            sess = rpc.connect(url, sport, key=matchkey, session_timeout=session_timeout)
            sess.gos_server_addr = f"{url}:{sport}"  # which server this is (see server_registered)
            return sess
        except Exception as err:  # noqa: BLE001 - the server went away between hand-out and connect
            last_err = err
            time.sleep(0.2)
    raise DeviceUnavailableError(f"no usable RPC session under key '{key}' at {host}:{port} within "
                                 f"{queue_timeout:g} s (last error: {last_err})")


def server_registered(host: str, port: int, addr: str, timeout: float = 5.0) -> bool:
    """Whether the server listening at `addr` ('host:port') is still registered with the tracker
    (a server that died is dropped at once, when its tracker connection closes)."""
    try:
        return any(a == addr for a, _ in query_tracker(host, port, timeout=timeout).servers)
    except DeviceUnavailableError:
        return False


# ---------------------------------------------------------------------------------------------
# Local processes
# ---------------------------------------------------------------------------------------------

def free_port(host: str = "127.0.0.1", low: int = 20000, high: int = 60000, span: int = 1) -> int:
    """A random port in [low, high) such that `span` consecutive ports are currently free on `host`."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(low, high - span)
        socks = []
        try:
            for p in range(port, port + span):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no free port found in [{low}, {high}) on {host}")


def _cli_command(*args: str) -> list[str]:
    # `python -m gos_tvm.hw.rpc_cli` runs only the rpc subcommands (not the whole gos-tvm CLI).
    return [sys.executable, "-m", "gos_tvm.hw.rpc_cli", *args]


@dataclass
class ManagedProcess:
    """A process we started in its own session (process group), with its log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the CLI process, TVM's server worker, session children)."""
        if self.proc.poll() is None or sig == signal.SIGKILL:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` s; always reaps the process."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # children of a CLI process that exited on SIGTERM
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass


def spawn(name: str, cmd: list[str], log_dir: Path) -> ManagedProcess:
    """Start `cmd` as a managed child process (tracker, server, emulated server) logging to
    `log_dir/<name>.log`; it exits with this process (GOS_TVM_EXIT_WITH_PARENT)."""
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["GOS_TVM_EXIT_WITH_PARENT"] = str(os.getpid())  # see rpc_cli._serve_forever
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        log.close()
    return ManagedProcess(name, proc, log_path)


def _spawn_tracker(host: str, port: int, log_dir: Path) -> ManagedProcess:
    mp = spawn(f"tracker-{port}", _cli_command("tracker", "--host", host, "--port", str(port),
                                                 "--port-end", str(port + 1), "--silent"), log_dir)
    mp.port = port
    return mp


def _wait_tracker(mp: ManagedProcess, host: str, timeout: float) -> bool:
    """True once the tracker answers; False if its process exited (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mp.alive():
            return False
        try:
            query_tracker(host, int(mp.port), timeout=2.0)
            return True
        except DeviceUnavailableError:
            time.sleep(0.2)
    raise DeviceUnavailableError(f"RPC tracker {mp.name} did not answer within {timeout:g} s:\n{mp.log_tail()}")


def start_tracker(host: str = "127.0.0.1", port: int | None = None, *, log_dir: str | Path | None = None,
                  startup_timeout: float = 60.0, attempts: int = 4) -> ManagedProcess:
    """Start `gos-tvm rpc tracker` as a separate process on a free port and wait until it answers."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="gos_tvm_rpc_"))
    last = ""
    for attempt in range(attempts):
        mp = _spawn_tracker(host, port if (port is not None and attempt == 0) else free_port(host), log_dir)
        try:
            if _wait_tracker(mp, host, startup_timeout):
                return mp
        except BaseException:
            mp.stop()
            raise
        last = mp.log_tail()
        mp.stop()
        if port is not None:
            raise DeviceUnavailableError(f"could not start an RPC tracker on {host}:{port}:\n{last}")
    raise DeviceUnavailableError(f"could not start an RPC tracker on {host} after {attempts} attempts. "
                                 f"Last log:\n{last}")


def start_server(tracker: tuple[str, int], key: str, *, host: str = "127.0.0.1", log_dir: str | Path | None = None,
                 name: str | None = None, threads: int | None = None) -> ManagedProcess:
    """Start `gos-tvm rpc server` as a separate process, registering under `key` at `tracker`, running
    kernels on `threads` threads (default: as `gos_tvm.threads` configured this process).
    Does not wait for the registration (see `require_servers`)."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="gos_tvm_rpc_"))
    p = free_port(host, span=16)
    mp = spawn(name or f"server-{key}-{p}",
                _cli_command("server", "--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key, "--host", host,
                             "--port", str(p), "--port-end", str(p + 16), "--silent", "--tracker-timeout", "30",
                             *(["--threads", str(threads)] if threads else [])),
                log_dir)
    mp.port = p
    return mp


class LocalDevicePool:
    """A local RPC tracker and `n_servers` RPC servers under `key`, each a separate process on loopback.

    Use as a context manager; it unpacks as (host, port, key)::

        with LocalDevicePool("local", n_servers=2) as pool:
            host, port, key = pool
            tune_primfunc(func, "local", tracker=(host, port), key=key)

    Each server runs kernels on `threads` threads (default: this process's count, `gos_tvm.threads`,
    shared between the servers).  Start-up waits at most `startup_timeout` s
    (DeviceUnavailableError with the processes' logs otherwise); on exit every process (and its
    children) is terminated.  `kill_server(i)` kills one server abruptly (SIGKILL to its process
    group), as a device that dies would.
    """

    def __init__(self, key: str = "local", n_servers: int = 2, *, host: str = "127.0.0.1",
                 startup_timeout: float = 90.0, log_dir: str | Path | None = None, threads: int | None = None):
        if n_servers < 0:
            raise ValueError("n_servers must be >= 0")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 (threads each server runs kernels with), got {threads!r}")
        self.key, self.n_servers, self.host = key, n_servers, host
        # Servers on one host measure side by side: by default each gets its share of the cores, so
        # that parallel measurements do not take threads from each other.
        self.server_threads = threads or max(1, configure_runtime_threads() // max(1, n_servers))
        self.startup_timeout = startup_timeout
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="gos_tvm_rpc_"))
        self.tracker_proc: Optional[ManagedProcess] = None
        self.servers: list[ManagedProcess] = []
        self._killed: set[int] = set()

    # -- addresses -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self.tracker_proc is None:
            raise RuntimeError("LocalDevicePool is not started")
        return int(self.tracker_proc.port)

    @property
    def tracker(self) -> tuple[str, int]:
        """(host, port) of the tracker."""
        return (self.host, self.port)

    def __iter__(self) -> Iterator:
        return iter((self.host, self.port, self.key))

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "LocalDevicePool":
        """Start the tracker and the servers concurrently (servers retry until the tracker answers)."""
        try:
            for attempt in range(4):
                self.tracker_proc = _spawn_tracker(self.host, free_port(self.host), self.log_dir)
                self.servers = [start_server(self.tracker, self.key, host=self.host, log_dir=self.log_dir,
                                             threads=self.server_threads)
                                for _ in range(self.n_servers)]
                if _wait_tracker(self.tracker_proc, self.host, self.startup_timeout):
                    break
                # the tracker could not bind its port (taken meanwhile): start again elsewhere
                for s in self.servers:
                    s.stop()
                self.tracker_proc.stop()
                if attempt == 3:
                    raise DeviceUnavailableError(f"could not start an RPC tracker:\n{self.tracker_proc.log_tail()}")
            if self.n_servers:
                self.wait_ready(self.n_servers, self.startup_timeout, free=True)  # nobody uses them yet
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, n: int, timeout: float, free: bool = False) -> TrackerStatus:
        """Wait until `n` servers are registered under the key -- and, with `free`, offered as free
        (a server registers first and puts itself in the queue a moment later) -- failing early if
        one exits."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [s for s in self.servers if not s.alive() and s.pid not in self._killed]
            if dead:
                raise DeviceUnavailableError(f"RPC server {dead[0].name} exited during start-up:\n{dead[0].log_tail()}")
            status = query_tracker(*self.tracker, timeout=5.0)
            if status.count(self.key) >= n and (not free or status.free(self.key) >= n):
                return status
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {s.name}\n{s.log_tail(8)}" for s in self.servers)
                raise DeviceUnavailableError(f"only {status.count(self.key)} of {n} RPC servers registered under "
                                             f"'{self.key}' within {timeout:g} s:\n{logs}")
            time.sleep(0.25)

    def add_server(self, wait: bool = True) -> ManagedProcess:
        """Start one more server under the key (and wait for it to register)."""
        before = query_tracker(*self.tracker).count(self.key)
        mp = start_server(self.tracker, self.key, host=self.host, log_dir=self.log_dir)
        self.servers.append(mp)
        if wait:
            self.wait_ready(before + 1, self.startup_timeout)
        return mp

    def kill_server(self, index: int = 0) -> ManagedProcess:
        """Kill server `index` abruptly (SIGKILL to its process group) and reap it."""
        mp = self.servers[index]
        self._killed.add(mp.pid)
        mp.kill(signal.SIGKILL)
        try:
            mp.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return mp

    def status(self) -> TrackerStatus:
        return query_tracker(*self.tracker)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        if self.tracker_proc is not None:
            self.tracker_proc.stop()
        if self._own_log_dir:
            import shutil

            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalDevicePool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["DeviceUnavailableError", "TrackerStatus", "query_tracker", "require_servers", "request_session",
           "server_registered",
           "connect_tracker_socket", "free_port", "start_tracker", "start_server", "LocalDevicePool",
           "ManagedProcess"]
