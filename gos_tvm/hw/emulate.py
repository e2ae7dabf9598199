"""An emulated device in the RPC pool: a Debian rootfs of the board's architecture run under
qemu user-mode emulation (binfmt_misc), with the board's TVM runtime wheel in a venv, serving a
TVM RPC server that registers with a tracker on this machine.

    build_emulated_device("rasp3b-aarch64")          # once (cached): ~6-10 min, ~600 MB, needs root
    srv = start_emulated_server(("127.0.0.1", 9190))  # registers under 'rasp3b-aarch64-emulated'
    dev = emulated_preset("rasp3b-aarch64")           # compile/measure with this: results say 'emulated'
    ...
    srv.stop()

What it exercises is the real board path (cross-compiled `.so` -> upload through the tracker ->
ARM TVM runtime -> outputs back), so correctness checks are meaningful.  Its *timings* are qemu
timings (typically ~10x a native board, with a different profile), never Raspberry Pi timings:
the preset it goes with (`Preset.as_emulated`) labels every result as emulated.

Recipe (all as root; Debian packages and PyPI only):
  1. `apt-get install qemu-user-static debootstrap binfmt-support` (+ `g++-aarch64-linux-gnu` for export);
  2. `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` if needed, `update-binfmts --enable qemu-aarch64`;
  3. `debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,libstdc++6 bookworm ROOT MIRROR`;
  4. `pip download --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_aarch64 ...` on the host
     (the same apache-tvm / apache-tvm-ffi versions as the host's, so both ends speak the same RPC protocol);
  5. `chroot ROOT python3 -m venv /opt/gos_tvm/venv` and an offline `pip install --no-index` of those wheels;
  6. a smoke test (`import tvm.rpc` under emulation), then the marker file `ROOT/.gos_tvm_emulated.json`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .presets import Preset, preset
from .tracker import DeviceUnavailableError, ManagedProcess, free_port, query_tracker, spawn


class EmulatedDeviceError(RuntimeError):
    """This machine cannot build or start the emulated device; the message names the missing piece."""


@dataclass(frozen=True)
class EmulatedSpec:
    """How to emulate one preset."""

    preset: str
    debian_arch: str        # debootstrap --arch
    qemu: str               # binfmt entry / qemu-user name (qemu-aarch64)
    platforms: tuple        # pip --platform tags for the wheels
    suite: str = "bookworm"
    python_version: str = "3.11"  # bookworm's python3

    @property
    def key(self) -> str:
        return f"{self.preset}-emulated"


EMULATED: dict[str, EmulatedSpec] = {
    "rasp3b-aarch64": EmulatedSpec("rasp3b-aarch64", "arm64", "qemu-aarch64",
                                   ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")),
}

#: Where the venv lives inside the rootfs, and the wheels it was installed from.
VENV = "/opt/gos_tvm/venv"
WHEELS = "/opt/gos_tvm/wheels"
MARKER = ".gos_tvm_emulated.json"
_STAGE_DEBOOTSTRAP = ".gos_tvm_debootstrap_done"
#: Packages of the host whose versions the device gets (same TVM runtime and FFI as the host).
_PINNED = ("apache-tvm", "apache-tvm-ffi")
#: Further runtime dependencies of the RPC server (tvm's own requirements + what tvm.rpc imports).
_EXTRA = ("numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle", "tornado")


def spec(name: str) -> EmulatedSpec:
    if name not in EMULATED:
        raise ValueError(f"no emulated device for {name!r}; emulated devices: {', '.join(EMULATED)}")
    return EMULATED[name]


def default_root(name: str = "rasp3b-aarch64") -> Path:
    """~/.cache/gos_tvm/emulated/<name> (or $GOS_TVM_EMULATED_ROOT/<name>)."""
    base = os.environ.get("GOS_TVM_EMULATED_ROOT")
    return Path(base) / name if base else Path.home() / ".cache" / "gos_tvm" / "emulated" / name


def _root(name: str, root) -> Path:
    return Path(root) if root is not None else default_root(name)


def default_key(name: str = "rasp3b-aarch64") -> str:
    return spec(name).key


def emulated_preset(name: str = "rasp3b-aarch64", key: Optional[str] = None) -> Preset:
    """The preset to compile and measure with on the emulated device: the board's target and
    cross-compiler, its own key, and `emulated=True` so that every result is labelled as such."""
    spec(name)  # a clear error for a preset that has no emulated form
    board = preset(name)
    return board.as_emulated(
        f"{board.label} -- EMULATED under qemu-user on this host: timings are emulation timings, "
        "not board timings").with_key(key or default_key(name))


def is_built(name: str = "rasp3b-aarch64", root=None) -> bool:
    """True if the device's rootfs was built completely (its marker file exists)."""
    return (_root(name, root) / MARKER).is_file()


def build_info(name: str = "rasp3b-aarch64", root=None) -> dict:
    return json.loads((_root(name, root) / MARKER).read_text())


# -- host checks ------------------------------------------------------------------------------

def _run(cmd: list[str], what: str, log: Callable[[str], None], timeout: float = 3600, **kw) -> str:
    log("$ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    except FileNotFoundError as err:
        raise EmulatedDeviceError(f"{what}: {cmd[0]} not found ({err})") from err
    except subprocess.TimeoutExpired as err:
        raise EmulatedDeviceError(f"{what}: timed out after {timeout:g} s") from err
    if r.returncode != 0:
        tail = "\n".join(r.stdout.splitlines()[-25:])
        raise EmulatedDeviceError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")
    return r.stdout


def _require_root() -> None:
    if os.geteuid() != 0:
        raise EmulatedDeviceError("the emulated device needs root (debootstrap, chroot and the binfmt_misc "
                                  "registration of qemu-user); run as root, or build it once as root with "
                                  "`sudo gos-tvm rpc emulate rasp3b-aarch64 --build-only`")


def _ensure_host_packages(s: EmulatedSpec, log) -> None:
    need = {"debootstrap": "debootstrap", f"{s.qemu}-static": "qemu-user-static",
            "update-binfmts": "binfmt-support"}
    missing = sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise EmulatedDeviceError(f"missing host tools {', '.join(missing)} and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "install", "-y", "-q", *missing], "apt-get install " + " ".join(missing), log, env=env)
    except EmulatedDeviceError:
        _run(["apt-get", "update", "-q"], "apt-get update", log, env=env)
        _run(["apt-get", "install", "-y", "-q", *missing], "apt-get install " + " ".join(missing), log, env=env)
    still = sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})
    if still:
        raise EmulatedDeviceError(f"host packages {', '.join(still)} are installed but their tools are not on PATH")


_BINFMT = Path("/proc/sys/fs/binfmt_misc")


def binfmt_entry(qemu: str = "qemu-aarch64") -> Optional[dict]:
    """The kernel's binfmt_misc entry for `qemu` ({'enabled': bool, 'interpreter': str, 'flags': str}) or None."""
    path = _BINFMT / qemu
    try:
        text = path.read_text()
    except OSError:
        return None
    info = {"enabled": text.splitlines()[0].strip() == "enabled", "interpreter": "", "flags": ""}
    for line in text.splitlines():
        if line.startswith("interpreter "):
            info["interpreter"] = line.split(None, 1)[1].strip()
        elif line.startswith("flags:"):
            info["flags"] = line.split(":", 1)[1].strip()
    return info


def _ensure_binfmt(s: EmulatedSpec, log) -> dict:
    if not (_BINFMT / "register").exists():
        try:
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(_BINFMT)], "mounting binfmt_misc", log, timeout=30)
        except EmulatedDeviceError as err:
            raise EmulatedDeviceError(
                f"binfmt_misc is not mounted at {_BINFMT} and cannot be mounted here ({err}); in a container, "
                "the host must provide it (e.g. run the container --privileged, or register qemu on the host "
                f"with `update-binfmts --enable {s.qemu}` / `docker run --privileged multiarch/qemu-user-static`)") from err
    entry = binfmt_entry(s.qemu)
    if entry is None or not entry["enabled"]:
        try:
            _run(["update-binfmts", "--enable", s.qemu], f"update-binfmts --enable {s.qemu}", log, timeout=60)
        except EmulatedDeviceError as err:
            if binfmt_entry(s.qemu) is None:
                raise EmulatedDeviceError(f"binfmt for {s.qemu} cannot be enabled: {err}") from err
        entry = binfmt_entry(s.qemu)
    if entry is None or not entry["enabled"]:
        raise EmulatedDeviceError(f"binfmt for {s.qemu} cannot be enabled: {_BINFMT / s.qemu} is "
                                  f"{'missing' if entry is None else 'disabled'} after `update-binfmts --enable {s.qemu}`")
    return entry


def _apt_mirror() -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line), else deb.debian.org."""
    src = Path("/etc/apt")
    files = sorted(src.glob("sources.list.d/*.sources")) + [src / "sources.list"] + sorted(src.glob("sources.list.d/*.list"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            uri = None
            if line.startswith("URIs:"):
                uri = line.split(":", 1)[1].split()[0]
            elif line.startswith("deb ") and "[" not in line.split()[1]:
                uri = line.split()[1]
            elif line.startswith("deb ["):
                uri = line.split("]", 1)[1].split()[0]
            if uri and "security" not in uri and uri.rstrip("/").endswith("debian"):
                return uri
    return "http://deb.debian.org/debian"


def _host_version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _chroot(root: Path, *cmd: str) -> list[str]:
    return ["chroot", str(root), *cmd]


# -- build ------------------------------------------------------------------------------------

def build_emulated_device(name: str = "rasp3b-aarch64", root=None, *, mirror: Optional[str] = None,
                          rebuild: bool = False, log: Optional[Callable[[str], None]] = None) -> Path:
    """Build the emulated device's rootfs once (cached by a marker file) and return its root.

    Raises EmulatedDeviceError naming the missing piece when this machine cannot (not root, binfmt
    cannot be enabled, debootstrap or the wheel download failed, the runtime does not start...).
    """
    s = spec(name)
    root = _root(name, root)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if is_built(name, root) and not rebuild:
        return root
    t0 = time.monotonic()
    _require_root()
    _ensure_host_packages(s, log)
    entry = _ensure_binfmt(s, log)
    log(f"binfmt {s.qemu}: enabled, interpreter {entry['interpreter']}, flags {entry['flags'] or '-'}")

    # 1. the Debian rootfs
    if rebuild and (root / MARKER).exists():
        (root / MARKER).unlink()
    if not (root / _STAGE_DEBOOTSTRAP).exists():
        if root.exists() and any(root.iterdir()):
            if not (root / "debootstrap").exists() and not (root / "etc" / "debian_version").exists():
                raise EmulatedDeviceError(f"{root} exists, is not empty and is not a (partial) Debian rootfs; "
                                          "remove it or pass another root")
            log(f"removing the partial rootfs {root}")
            _umount_all(root)
            if _mounts_under(root):
                raise EmulatedDeviceError(f"cannot remove the partial rootfs {root}: still mounted there: "
                                          f"{', '.join(_mounts_under(root))}")
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        mirror = mirror or _apt_mirror()
        _run(["debootstrap", f"--arch={s.debian_arch}", "--variant=minbase",
              "--include=python3,python3-venv,libstdc++6,ca-certificates", s.suite, str(root), mirror],
             f"debootstrap of Debian {s.suite}/{s.debian_arch} from {mirror}", log, timeout=3600)
        (root / _STAGE_DEBOOTSTRAP).write_text(f"{s.suite} {s.debian_arch} {mirror}\n")
    # qemu-user-static registers with the F (fix-binary) flag, so the interpreter need not be in
    # the rootfs; without it, the chroot needs its own copy at the registered path.
    if "F" not in entry["flags"] and entry["interpreter"]:
        dst = root / entry["interpreter"].lstrip("/")
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry["interpreter"], dst)
    try:
        out = _run(_chroot(root, "/usr/bin/python3", "-c", "import platform; print(platform.machine())"),
                   f"running the rootfs's python3 under {s.qemu}", log, timeout=300)
    except EmulatedDeviceError as err:
        raise EmulatedDeviceError(f"the {s.debian_arch} rootfs does not run under qemu-user (binfmt {s.qemu}): {err}") from err
    log(f"rootfs python3 runs as {out.strip()}")

    # 2. the wheels (downloaded on the host: pip under emulation is slow and the rootfs has no index config)
    wheels = root / WHEELS.lstrip("/")
    wheels.mkdir(parents=True, exist_ok=True)
    reqs = []
    for dist in _PINNED:
        v = _host_version(dist)
        reqs.append(f"{dist}=={v}" if v else dist)
    reqs += list(_EXTRA)
    platform_args = [a for p in s.platforms for a in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
          "--python-version", s.python_version, *platform_args, "-d", str(wheels), *reqs],
         f"pip download of the {s.debian_arch} wheels ({', '.join(reqs)})", log, timeout=1800)

    # 3. the venv, installed offline
    if not (root / VENV.lstrip("/") / "bin" / "python").exists():
        _run(_chroot(root, "/usr/bin/python3", "-m", "venv", VENV), "creating the venv in the rootfs", log, timeout=1800)
    _run(_chroot(root, f"{VENV}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                 "--no-compile", "--find-links", WHEELS, *reqs),
         "offline pip install of the wheels in the rootfs", log, timeout=3600)

    # 4. smoke test: the TVM runtime imports under emulation
    out = _run(_chroot(root, f"{VENV}/bin/python", "-c",
                       "import platform, tvm, tvm.rpc, tvm.exec.rpc_server; print(platform.machine(), tvm.__version__)"),
               "importing tvm under emulation", log, timeout=900)
    machine, _, tvm_version = out.strip().splitlines()[-1].partition(" ")
    info = {"name": name, "key": s.key, "arch": machine, "tvm": tvm_version, "suite": s.suite,
            "venv": VENV, "requirements": reqs, "build_s": round(time.monotonic() - t0, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (root / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log(f"emulated device {name} ready in {root} ({machine}, tvm {tvm_version}, {info['build_s']} s)")
    return root


# -- serving ----------------------------------------------------------------------------------

def _proc_mounted(root: Path) -> bool:
    target = os.path.realpath(root / "proc")
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)
    except OSError:
        return False


def _mount_proc(root: Path) -> None:
    """/proc inside the rootfs (psutil and TVM's worker pools read it); left mounted, shared by servers."""
    if not _proc_mounted(root):
        (root / "proc").mkdir(exist_ok=True)
        r = subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], capture_output=True, text=True)
        if r.returncode != 0:
            raise EmulatedDeviceError(f"cannot mount /proc in {root}: {r.stderr.strip()}")


def _mounts_under(root: Path) -> list[str]:
    base = os.path.realpath(root)
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return []
    return [m for m in points if m == base or m.startswith(base + "/")]


def _umount_all(root: Path) -> None:
    """Unmount whatever is mounted inside the rootfs (deepest first): /proc of the servers, and what
    an interrupted debootstrap left (proc, sys, dev/pts)."""
    for m in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def release(name: str = "rasp3b-aarch64", root=None) -> None:
    """Unmount what the emulated servers mounted in the rootfs (call when no server runs any more)."""
    _umount_all(_root(name, root))


@dataclass
class EmulatedServer:
    """A running emulated RPC server (a ManagedProcess: chroot -> qemu -> python)."""

    name: str
    key: str
    tracker: tuple
    root: Path
    process: ManagedProcess

    def alive(self) -> bool:
        return self.process.alive()

    def log_tail(self, n: int = 20) -> str:
        return self.process.log_tail(n)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> "EmulatedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_emulated_server(tracker: tuple, key: Optional[str] = None, root=None, *, name: str = "rasp3b-aarch64",
                          host: str = "127.0.0.1", startup_timeout: float = 300.0,
                          log_dir=None, wait: bool = True) -> EmulatedServer:
    """Start the emulated device's TVM RPC server (`chroot ROOT VENV/bin/python -m tvm.exec.rpc_server`)
    as a separate process registering at `tracker` (host, port) under `key` (default
    '<name>-emulated'); wait up to `startup_timeout` s for the registration (TVM imports slowly
    under qemu).  Stop it with `.stop()` (or use it as a context manager)."""
    s = spec(name)
    root = _root(name, root)
    key = key or s.key
    if not is_built(name, root):
        raise EmulatedDeviceError(f"the emulated device {name} is not built in {root}: run "
                                  f"`gos-tvm rpc emulate {name} --build-only` (as root) first")
    _require_root()
    entry = binfmt_entry(s.qemu)
    if entry is None or not entry["enabled"]:
        raise EmulatedDeviceError(f"binfmt for {s.qemu} is not enabled (was the machine restarted?): "
                                  f"run `update-binfmts --enable {s.qemu}` or rebuild with `gos-tvm rpc emulate {name}`")
    _mount_proc(root)
    thost, tport = tracker[0], int(tracker[1])
    before = query_tracker(thost, tport, timeout=5.0).count(key)
    port = free_port(host, span=16)
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="gos_tvm_emulated_"))
    cmd = _chroot(root, "/usr/bin/env", "HOME=/root", "PYTHONUNBUFFERED=1", "TMPDIR=/tmp",
                  f"{VENV}/bin/python", "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
                  "--port-end", str(port + 16), "--tracker", f"{thost}:{tport}", "--key", key)
    mp = spawn(f"emulated-{key}-{port}", cmd, log_dir)
    mp.port = port
    srv = EmulatedServer(name, key, (thost, tport), root, mp)
    if not wait:
        return srv
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if not mp.alive():
                raise DeviceUnavailableError(f"the emulated RPC server exited during start-up:\n{mp.log_tail()}")
            if query_tracker(thost, tport, timeout=5.0).count(key) > before:
                return srv
            if time.monotonic() > deadline:
                raise DeviceUnavailableError(f"the emulated RPC server did not register under '{key}' within "
                                             f"{startup_timeout:g} s:\n{mp.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        mp.stop()
        raise


__all__ = ["EmulatedDeviceError", "EmulatedSpec", "EMULATED", "EmulatedServer", "build_emulated_device",
           "start_emulated_server", "emulated_preset", "is_built", "build_info", "default_root", "default_key",
           "binfmt_entry", "release"]
