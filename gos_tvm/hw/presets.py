"""Device presets: the TVM target, the host-side export (compile/link) function and the core count
of each device the search knows how to measure on.

A preset is what ties a device to a TVM target.  The target decides code generation (triple, CPU,
SIMD features, and `num-cores`, which MetaSchedule needs for its parallel-loop rules); the export
function turns a built module into a shared library *on the host* that the device can `dlopen`
(cross-compilers for the boards, the NDK for Android), so that the RPC server on the device never
needs a compiler of its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    import tvm

from ..targets import LLVM_CL_OPT, cpu_target_config  # noqa: F401 - every preset's target carries LLVM_CL_OPT

#: A function with export_library's `fcompile` signature: fcompile(output, objects, options=None).
FCompile = Callable[..., None]


@dataclass(frozen=True)
class Preset:
    """One device kind.

    Attributes
    ----------
    name:
        The preset's name (`preset(name)` gives it back).
    target:
        The `tvm.target.Target` to compile and tune for (always an llvm target with `num-cores`).
    export:
        The `fcompile` to pass to `export_library` on the host: None means the host's default C++
        compiler (right for `local`); a `tvm.support.cc.cross_compiler(...)` for the boards;
        `tvm.support.ndk.create_shared` (reads `TVM_NDK_CC`) for Android.
    num_cores:
        Cores the device has (the target's `num-cores`).
    key:
        The default RPC key its servers register under at the tracker.
    emulated:
        True when the device behind the key is an emulator (e.g. qemu-user); its timings are
        emulation timings, never board timings.  Reports must say so.
    label:
        A human-readable description (printed in reports and `gos-tvm rpc query`).
    compiler:
        The host compiler the export uses (for error messages and `check_export`); None for the
        host's default.
    """

    name: str
    target: "tvm.target.Target"
    export: Optional[FCompile]
    num_cores: int
    key: str
    emulated: bool = False
    label: str = ""
    compiler: Optional[str] = None
    target_config: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_local(self) -> bool:
        """True for the host CPU preset (no cross-compilation)."""
        return self.export is None

    def with_key(self, key: str) -> "Preset":
        """The same preset, registered under another RPC key."""
        return replace(self, key=key)

    def as_emulated(self, label: str | None = None) -> "Preset":
        """The same preset marked as measured on an emulator (e.g. qemu-user aarch64)."""
        return replace(self, emulated=True,
                       label=label or f"{self.label} (emulated: timings are not board timings)")

    def check_export(self) -> None:
        """Raise a clear error now if the export toolchain is missing on this host, rather than
        in the middle of tuning."""
        import shutil

        if self.name == "redmi-note-7s" and "TVM_NDK_CC" not in os.environ:
            raise RuntimeError(
                f"preset '{self.name}' exports with the Android NDK: set TVM_NDK_CC to the NDK's clang++ "
                "for aarch64-linux-android (e.g. $NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/"
                "aarch64-linux-android28-clang++)")
        if self.compiler and shutil.which(self.compiler) is None:
            raise RuntimeError(f"preset '{self.name}' exports with '{self.compiler}', which is not on PATH "
                               f"(Debian/Ubuntu: apt-get install {_APT_HINT.get(self.compiler, self.compiler)})")

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for reports)."""
        return {"name": self.name, "target": str(self.target), "num_cores": self.num_cores, "key": self.key,
                "emulated": self.emulated, "label": self.label, "compiler": self.compiler or "host default"}


_APT_HINT = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf"}


def _host_cpu() -> str | None:
    """LLVM's name for this CPU (so the local target gets AVX2/AVX-512), or None if unknown."""
    from tvm.target import codegen

    try:
        cpu = str(codegen.llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - an LLVM without host detection: fall back to generic
        return None
    return None if cpu in ("", "generic") else cpu


def _local(num_cores: int | None = None) -> Preset:
    import tvm

    from ..threads import configure_runtime_threads

    # The cores a kernel runs on here are the threads TVM's runtime runs it with (TVM_NUM_THREADS,
    # else this host's physical cores): tuning for more than that tunes parallel loops no thread runs.
    n = int(num_cores or configure_runtime_threads())
    cpu = _host_cpu()
    config = cpu_target_config(n, mcpu=cpu)
    return Preset("local", tvm.target.Target(config), None, n, "local",
                  label=f"this machine's CPU ({cpu or 'generic'}, {n} cores)", target_config=config)


def _rasp3b() -> Preset:
    import tvm
    from tvm.support import cc

    # The tag alone gives soft-float objects that arm-linux-gnueabihf-g++ refuses to link
    # ("uses VFP register arguments"): Raspberry Pi OS is hard-float.
    config = cpu_target_config(4, tag="arm/rasp3b", mfloat_abi="hard")
    return Preset("rasp3b", tvm.target.Target(config), cc.cross_compiler("arm-linux-gnueabihf-g++"), 4, "rasp3b",
                  label="Raspberry Pi 3 Model B, 32-bit OS (BCM2837, Cortex-A53 as armv7l hard-float + NEON)",
                  compiler="arm-linux-gnueabihf-g++", target_config=config)


def _rasp3b_aarch64() -> Preset:
    import tvm
    from tvm.support import cc

    config = cpu_target_config(4, mtriple="aarch64-linux-gnu", mcpu="cortex-a53", mattr=["+neon"])
    return Preset("rasp3b-aarch64", tvm.target.Target(config), cc.cross_compiler("aarch64-linux-gnu-g++"), 4,
                  "rasp3b-aarch64", label="Raspberry Pi 3 Model B, 64-bit OS (BCM2837, Cortex-A53, aarch64)",
                  compiler="aarch64-linux-gnu-g++", target_config=config)


def _redmi_note_7s() -> Preset:
    import tvm
    from tvm.support import ndk

    # Snapdragon 660: 4x Kryo 260 Gold (Cortex-A73 derived) + 4x Kryo 260 Silver (Cortex-A53 derived).
    config = cpu_target_config(8, mtriple="aarch64-linux-android", mcpu="cortex-a73", mattr=["+neon"])
    return Preset("redmi-note-7s", tvm.target.Target(config), ndk.create_shared, 8, "redmi-note-7s",
                  label="Xiaomi Redmi Note 7S (Snapdragon 660, 4x A73 + 4x A53, Android, aarch64)",
                  compiler=None, target_config=config)


_PRESETS: dict[str, Callable[[], Preset]] = {
    "local": _local,
    "rasp3b": _rasp3b,
    "rasp3b-aarch64": _rasp3b_aarch64,
    "redmi-note-7s": _redmi_note_7s,
}

#: Names accepted by `preset()`.
PRESET_NAMES: tuple[str, ...] = tuple(_PRESETS)


def preset(name: str, *, key: str | None = None, num_cores: int | None = None) -> Preset:
    """The device preset called `name`: one of 'local', 'rasp3b', 'rasp3b-aarch64', 'redmi-note-7s'.

    `key` overrides the default RPC key; `num_cores` overrides the core count of `local` (default:
    the threads TVM runs kernels with in this process, `gos_tvm.threads`); the search's local RPC
    server then runs kernels on that many threads (e.g. ``num_cores=1`` tunes and times for one
    thread).  An unknown name raises ValueError listing the presets.
    """
    if isinstance(name, Preset):
        return name.with_key(key) if key else name
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"unknown device preset {name!r}; the presets are: {', '.join(PRESET_NAMES)}")
    if num_cores is not None and name != "local":
        raise ValueError(f"num_cores can only be overridden for 'local' (preset {name!r} has a fixed core count)")
    if num_cores is not None and (isinstance(num_cores, bool) or not isinstance(num_cores, int) or num_cores < 1):
        raise ValueError(f"num_cores must be an integer >= 1 (cores of this machine to tune for), got {num_cores!r}")
    p = _local(num_cores) if name == "local" else _PRESETS[name]()
    return p.with_key(key) if key else p


def resolve_target(target: "str | dict | Preset | tvm.target.Target") -> "tvm.target.Target":
    """A `tvm.target.Target` for MetaSchedule from a preset name, a Preset, a config dict or a Target.

    The target must be an llvm (CPU) target with `num-cores`; anything else raises ValueError with the
    list of presets, so a typo does not surface later as an obscure MetaSchedule error.
    """
    import tvm

    if isinstance(target, Preset):
        return target.target
    if isinstance(target, str):
        if target in _PRESETS:
            return preset(target).target
        raise ValueError(f"unknown target {target!r}: give a preset ({', '.join(PRESET_NAMES)}), "
                         "a target config dict such as {'kind': 'llvm', 'num-cores': 4}, or a tvm.target.Target")
    if isinstance(target, dict):
        try:
            target = tvm.target.Target(target)
        except Exception as err:  # noqa: BLE001 - TVM raises several types for bad configs
            raise ValueError(f"malformed target {target!r}: {err}; the presets are: {', '.join(PRESET_NAMES)}") from err
    if not isinstance(target, tvm.target.Target):
        raise ValueError(f"cannot make a target from {target!r}; the presets are: {', '.join(PRESET_NAMES)}")
    if target.kind.name != "llvm":
        raise ValueError(f"target {target} is not a CPU (llvm) target; the presets are: {', '.join(PRESET_NAMES)}")
    if "num-cores" not in target.attrs:
        raise ValueError(f"target {target} has no 'num-cores' (MetaSchedule needs it), "
                         "e.g. {'kind': 'llvm', 'num-cores': 4}")
    return target


def resolve_preset(device: "str | Preset | None") -> Preset:
    """`device` as a Preset (None means 'local')."""
    if device is None:
        return preset("local")
    if isinstance(device, Preset):
        return device
    return preset(device)


__all__ = ["Preset", "preset", "PRESET_NAMES", "resolve_target", "resolve_preset"]
