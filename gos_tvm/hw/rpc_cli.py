"""`gos-tvm rpc tracker | server | query | emulate`: the device pool on the command line.

    gos-tvm rpc tracker --host 0.0.0.0 --port 9190
    gos-tvm rpc server  --tracker 192.168.1.10:9190 --key rasp3b        # on the device
    gos-tvm rpc query   --tracker 192.168.1.10:9190

Flag names: a tracker to talk to is always `--tracker HOST:PORT`, and the wait for it always
`--tracker-timeout`.  `tracker` and `server` bind with `--host/--port/--port-end`,
`--custom-addr`, `--load-library`, `--no-fork`, `--silent` as TVM's own
`python -m tvm.exec.rpc_tracker` / `rpc_server` do (the names are kept so TVM's docs apply).
Errors are one line on stderr: exit status 2 for a bad argument, 1 when the tracker or device
cannot be reached (`rpc query --key` without a server: 3; `rpc emulate` unable to build: 4).

TVM is imported inside the handlers only (`gos-tvm --help` stays fast).  Also runnable without the
rest of the CLI as `python -m gos_tvm.hw.rpc_cli ...` (which is how `LocalDevicePool` starts its
processes).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from ..errors import UserError
from ..threads import configure_runtime_threads


def _port_end(port: int, port_end: int | None) -> int:
    # TVM's own scripts default --port-end to 9199, so any --port above it fails to bind.
    return port_end if port_end is not None and port_end > port else port + 10


def _tracker_addr(value: str | None, flag: str = "--tracker") -> tuple[str, int]:
    host, _, port = (value or "").strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{flag} must be HOST:PORT (e.g. 127.0.0.1:9190), got {value!r}")
    return host, int(port)


def _positive(flag: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UserError(f"{flag} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _check_ports(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1..65535, got {args.port}")
    if args.port_end is not None and not args.port < args.port_end <= 65536:
        raise UserError(f"--port-end must be above --port {args.port} and at most 65536, got {args.port_end}")


def _install_sigterm() -> None:
    def _raise(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _serve_forever(thread) -> int:
    """Block on the serving thread until SIGINT/SIGTERM, then exit at once (the thread never ends)."""
    # Started by LocalDevicePool: exit with the process that started us, even if it was killed
    # without cleaning up (no orphaned trackers and servers).
    parent = int(os.environ.get("GOS_TVM_EXIT_WITH_PARENT", "0") or 0)
    try:
        while thread.is_alive():
            thread.join(0.5)
            if parent and os.getppid() != parent:
                break
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    os._exit(0)


def run_tracker(args: argparse.Namespace) -> int:
    import logging

    from tvm.rpc import tracker as tvm_tracker

    _check_ports(args)
    logging.basicConfig(level=logging.WARNING if args.silent else logging.INFO)
    _install_sigterm()
    # Serve in this process (TVM's Tracker class would start a second Python process for it).
    end = _port_end(args.port, args.port_end)
    try:
        port, _ = tvm_tracker._popen_start_tracker_server(  # noqa: SLF001 - what tvm.rpc.Tracker runs
            args.host, args.port, end, args.silent)
    except (ValueError, OSError) as err:
        raise UserError(f"cannot listen on {args.host} at any port in [{args.port}, {end}) ({err}): another "
                        "tracker may hold them; choose another --port (and --port-end)") from None
    print(f"RPC tracker listening on {args.host}:{port}", flush=True)
    return _serve_forever(tvm_tracker.PopenTrackerServerState.current.thread)


def _survive_crashing_sessions(tvm_server) -> None:
    """Keep serving after a session's child process dies abnormally.

    TVM serves each session in a forked child and raises in its listen loop when that child exits
    with an error -- which a kernel that crashes on the device (or a library that fails to load,
    in TVM 0.27) causes: the listen thread dies and the server silently stops serving while it
    still looks registered.  Here the failed session is logged and cleaned up and the server goes
    on to the next one.
    """
    import logging
    import shutil

    original = tvm_server._serving  # noqa: SLF001
    if getattr(original, "gos_robust", False):
        return

    def serving(sock, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            original(sock, addr, opts, load_library)
        except RuntimeError as err:
            logging.getLogger("gos_tvm.rpc").warning("session from %s ended abnormally: %s", addr, err)
            work = os.getcwd()
            os.chdir(cwd)
            if work != cwd:
                shutil.rmtree(work, ignore_errors=True)
            try:
                sock.close()
            except OSError:
                pass

    serving.gos_robust = True
    tvm_server._serving = serving  # noqa: SLF001 - the listen loop looks it up at each session


def run_server(args: argparse.Namespace) -> int:
    import logging

    from tvm.rpc import server as tvm_server

    from .tracker import DeviceUnavailableError, connect_tracker_socket

    _check_ports(args)
    wait = _positive("--tracker-timeout", args.tracker_timeout)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        # Before the first session forks: each session's kernels run on the pool sized by this.
        configure_runtime_threads(args.threads, override=True)
    logging.basicConfig(level=logging.WARNING if args.silent else logging.INFO)
    tracker_addr = None
    if args.tracker:
        tracker_addr = _tracker_addr(args.tracker)
        if not args.key:
            raise UserError("--key is required with --tracker (the device kind the server registers as)")
        # Wait a bounded time for the tracker (it may be starting too), then fail clearly instead
        # of TVM's silent 60 s retry loop inside its server process.
        import time

        deadline = time.monotonic() + wait
        while True:
            try:
                connect_tracker_socket(*tracker_addr, timeout=max(0.5, min(5.0, deadline - time.monotonic()))).close()
                break
            except DeviceUnavailableError as err:
                if time.monotonic() >= deadline:
                    # The last attempt's own wait is not the whole story: say how long we tried.
                    print(f"error: RPC tracker at {args.tracker} did not answer within --tracker-timeout "
                          f"{wait:g} s (last attempt: {err})", file=sys.stderr)
                    return 1
                time.sleep(0.25)
    _install_sigterm()
    _survive_crashing_sessions(tvm_server)
    # Serve in this process (TVM's Server class would start a second Python process for it); each
    # session is still served in a forked child, as TVM does.
    port = tvm_server._popen_start_rpc_server(  # noqa: SLF001 - what tvm.rpc.Server runs
        args.host, args.port, _port_end(args.port, args.port_end), tracker_addr=tracker_addr,
        key=args.key or "", load_library=args.load_library, custom_addr=args.custom_addr, silent=args.silent,
        no_fork=args.no_fork)
    where = f"tracker {args.tracker} under key '{args.key}'" if tracker_addr else "no tracker (direct connections)"
    print(f"RPC server listening on {args.host}:{port}, registered with {where}", flush=True)
    return _serve_forever(tvm_server.PopenRPCServerState.current.thread)


def run_query(args: argparse.Namespace) -> int:
    import json

    from .tracker import DeviceUnavailableError, query_tracker

    wait = _positive("--tracker-timeout", args.tracker_timeout)
    if args.tracker:
        host, port = _tracker_addr(args.tracker)
    else:  # the older --host/--port form
        host, port = _tracker_addr(f"{args.host}:{args.port}", "--host/--port")
    try:
        status = query_tracker(host, port, timeout=wait)
    except DeviceUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.key:
        status.servers = [(a, k) for a, k in status.servers if k == args.key]
        status.queues = {k: q for k, q in status.queues.items() if k == args.key}
    print(json.dumps(status.to_json(), indent=2) if args.json else status.text())
    if args.key and status.count(args.key) == 0:
        return 3
    return 0


def run_emulate(args: argparse.Namespace) -> int:
    """Build the emulated device once (cached) and serve it under the tracker until SIGINT/SIGTERM."""
    import time

    from .emulate import EmulatedDeviceError, build_emulated_device, default_key, start_emulated_server
    from .tracker import DeviceUnavailableError, query_tracker

    _positive("--startup-timeout", args.startup_timeout)
    if not args.build_only:
        # The tracker first: building the device (binfmt, a debootstrap download as root) takes minutes.
        host, port = _tracker_addr(args.tracker)
        try:
            query_tracker(host, port, timeout=5.0)
        except DeviceUnavailableError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    try:
        root = build_emulated_device(args.device, args.root, rebuild=args.rebuild)
    except (EmulatedDeviceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 4  # this machine cannot build the device (.ci/emulated.sh reports it as skipped)
    if args.build_only:
        print(f"emulated device {args.device} built in {root}")
        return 0
    key = args.key or default_key(args.device)
    _install_sigterm()
    try:
        srv = start_emulated_server((host, int(port)), key, root, name=args.device,
                                    startup_timeout=args.startup_timeout)
    except (EmulatedDeviceError, DeviceUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"emulated {args.device} RPC server registered with tracker {args.tracker} under key '{key}' "
          f"(log {srv.process.log_path}); EMULATED: its timings are qemu timings, not board timings", flush=True)
    try:
        while srv.alive():
            time.sleep(0.5)
        print(f"error: the emulated server exited:\n{srv.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.stop()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `rpc` with `tracker`, `server` and `query` to the `gos-tvm` command line."""
    rpc_p = subparsers.add_parser("rpc", help="RPC device pool: start a tracker or a device server, query a tracker")
    sub = rpc_p.add_subparsers(dest="rpc_command", required=True)

    t = sub.add_parser("tracker", help="start an RPC tracker (the pool that devices register with)")
    t.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: reachable by boards)")
    t.add_argument("--port", type=int, default=9190)
    t.add_argument("--port-end", type=int, default=None,
                   help="last port to try (exclusive); default port+10 (TVM's fixed 9199 breaks high ports)")
    t.add_argument("--silent", action="store_true")
    t.set_defaults(func=run_tracker)

    s = sub.add_parser("server", help="start an RPC server (run this on the device) and register it with a tracker")
    s.add_argument("--tracker", default=os.environ.get("TVM_TRACKER_HOST") and
                   f"{os.environ['TVM_TRACKER_HOST']}:{os.environ.get('TVM_TRACKER_PORT', '9190')}",
                   help="HOST:PORT of the tracker (default from TVM_TRACKER_HOST/TVM_TRACKER_PORT)")
    s.add_argument("--key", default=None, help="device key to register under (e.g. local, rasp3b, redmi-note-7s)")
    s.add_argument("--host", default="0.0.0.0", help="address to bind")
    s.add_argument("--port", type=int, default=9090)
    s.add_argument("--port-end", type=int, default=None, help="last port to try (exclusive); default port+10")
    s.add_argument("--custom-addr", default=None,
                   help="address to report to the tracker (when the device is behind NAT / has several interfaces)")
    s.add_argument("--load-library", default=None, help="extra shared libraries to load, ':'-separated")
    s.add_argument("--no-fork", action="store_true", help="spawn instead of fork for sessions")
    s.add_argument("--tracker-timeout", type=float, default=10.0,
                   help="seconds to wait for the tracker before giving up at start-up (default 10)")
    s.add_argument("--threads", type=int, default=None,
                   help="threads TVM runs each kernel with (default: TVM_NUM_THREADS if set, else this "
                        "device's physical cores; TVM's own default on x86 is half of them)")
    s.add_argument("--silent", action="store_true")
    s.set_defaults(func=run_server)

    q = sub.add_parser("query", help="show what a tracker holds: servers, keys, free and busy counts")
    q.add_argument("--tracker", metavar="HOST:PORT", default=None,
                   help="the tracker to ask (default TVM_TRACKER_HOST:TVM_TRACKER_PORT, else 127.0.0.1:9190)")
    # The older form, kept working (not listed): --host/--port, and --timeout for --tracker-timeout.
    q.add_argument("--host", default=os.environ.get("TVM_TRACKER_HOST", "127.0.0.1"), help=argparse.SUPPRESS)
    q.add_argument("--port", type=int, default=int(os.environ.get("TVM_TRACKER_PORT", "9190")),
                   help=argparse.SUPPRESS)
    q.add_argument("--key", default=None, help="only this key (exit status 3 if it has no server)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.add_argument("--tracker-timeout", "--timeout", dest="tracker_timeout", type=float, default=5.0,
                   help="seconds before an unreachable tracker is an error (default 5)")
    q.set_defaults(func=run_query)

    e = sub.add_parser("emulate", help="build (once, as root) and serve an emulated device (qemu-user) under a tracker; "
                       "exit status 4 if this machine cannot build it")
    e.add_argument("device", choices=["rasp3b-aarch64"], help="the device preset to emulate")
    e.add_argument("--tracker", default=os.environ.get("TVM_TRACKER_HOST") and
                   f"{os.environ['TVM_TRACKER_HOST']}:{os.environ.get('TVM_TRACKER_PORT', '9190')}",
                   help="HOST:PORT of the tracker to register with")
    e.add_argument("--key", default=None, help="key to register under (default '<device>-emulated')")
    e.add_argument("--root", default=None, help="rootfs directory (default ~/.cache/gos_tvm/emulated/<device>)")
    e.add_argument("--build-only", action="store_true", help="build the device and exit")
    e.add_argument("--rebuild", action="store_true", help="reinstall the runtime even if the device is built")
    e.add_argument("--startup-timeout", type=float, default=300.0,
                   help="seconds to wait for the emulated server to register (default 300)")
    e.set_defaults(func=run_emulate)


def main(argv: list[str] | None = None) -> int:
    from ..cli import OneLineParser, run_command

    parser = OneLineParser(prog="python -m gos_tvm.hw.rpc_cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] != "rpc":
        argv = ["rpc", *argv]
    args = parser.parse_args(argv)
    return run_command(args.func, args, debug)


if __name__ == "__main__":
    sys.exit(main())
