"""Compile a Relax module (original or adapted), run it with the Relax VM, export it to a `.so`.

The path from ``(mod, params)`` to an executable is

    bind params as constants -> relax.get_pipeline("zero")     (`legalize`: LegalizeOps,
        AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR)
    [-> MetaScheduleApplyDatabase inside `with target, database, PassContext(opt_level=3)`]
    -> tvm.compile(mod, target)

`legalize` gives the module that MetaSchedule's ``tune_relax`` / ``extract_tasks``
should see: tuning records match the PrimFuncs of exactly this module, which is why
`compile_module` applies a database explicitly to it (``compile_relax`` was seen to
produce an untuned module, see DESIGN.md).

Cross compilation: compile for a target whose ``mtriple`` names the device, then
`export_library` links with the matching Debian cross compiler
(``aarch64-linux-gnu-g++`` from ``g++-aarch64-linux-gnu``, ``arm-linux-gnueabihf-g++``
from ``g++-arm-linux-gnueabihf``).
"""
from __future__ import annotations

import os
import platform
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from ..targets import cpu_target
from .layout import to_conv_layout

#: The Debian package that provides each cross compiler.
CROSS_COMPILERS = {
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "arm": ("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"),
}

#: ELF ``e_machine`` values.
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183


def as_target(target: Any = None) -> tvm.target.Target:
    """A `tvm.target.Target` from a Target, a dict, a tag / JSON string, an object with a
    ``.target`` attribute (a device preset), or None (the host CPU: `gos_tvm.targets.cpu_target`,
    with ``num-cores`` and ``LLVM_CL_OPT``, so scoring and capture compile with the same workaround
    as tuning and export).

    An llvm target for a hard-float ARM triple (``*-gnueabihf``) without ``mfloat-abi``
    gets ``"mfloat-abi": "hard"``: without it LLVM emits soft-float objects that
    ``arm-linux-gnueabihf-g++`` refuses to link ("uses VFP register arguments, ... does
    not"); the ``arm/rasp3b`` tag is such a target.
    """
    if target is None:
        return cpu_target()
    if isinstance(target, tvm.target.Target):
        return _hard_float(target)
    if isinstance(target, (dict, str)):
        return _hard_float(tvm.target.Target(target))
    inner = getattr(target, "target", None)
    if inner is not None and inner is not target:
        return as_target(inner)
    raise TypeError(f"cannot make a TVM target from {type(target).__name__}: {target!r}")


def _hard_float(target: tvm.target.Target) -> tvm.target.Target:
    if target.kind.name != "llvm" or not _triple(target).endswith("gnueabihf") or target.attrs.get("mfloat-abi"):
        return target
    config = dict(target.export())
    config.pop("tag", None)
    config["mfloat-abi"] = "hard"
    return tvm.target.Target(config, target.host) if target.host is not None else tvm.target.Target(config)


def bind_params(mod: tvm.IRModule, params: Mapping[str, np.ndarray] | None) -> tvm.IRModule:
    """``mod`` with the parameter arguments of ``main`` bound to ``params`` as constants."""
    if not params:
        return mod
    names = {p.name for p in mod["main"].params}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"params {unknown} are not arguments of main")
    values = {k: tvm.runtime.tensor(np.ascontiguousarray(v)) for k, v in params.items()}
    return relax.transform.BindParams("main", values)(mod)


def legalize(mod: tvm.IRModule, params: Mapping[str, np.ndarray] | None = None,
             target: Any = None) -> tvm.IRModule:
    """Bind ``params`` and run ``relax.get_pipeline("zero")`` (legalize and fuse).

    This is the module to give MetaSchedule (``tune_relax`` / ``extract_tasks``) and the
    one `compile_module` applies a tuning database to.  Every operator, and every
    replacement's ``call_tir`` PrimFunc, is a (fused) PrimFunc of the result.
    """
    mod = bind_params(mod, params)
    with as_target(target), tvm.transform.PassContext(opt_level=3):
        mod = to_conv_layout(mod)  # `graph.layout.conv_layout`: NCHW unless NHWC is asked for
        mod = relax.get_pipeline("zero")(mod)
        # FuseTIR leaves the PrimFuncs it fused in the module; drop the unused ones.
        return relax.transform.DeadCodeElimination(["main"])(mod)


def apply_database(mod: tvm.IRModule, target: Any, database: Any) -> tvm.IRModule:
    """Replace each PrimFunc of a legalized module (`legalize`) by its best schedule in the
    MetaSchedule ``database`` (``MetaScheduleApplyDatabase`` inside ``with target, database,
    PassContext(opt_level=3)``); PrimFuncs without a record are left as they are."""
    target = as_target(target)
    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def compile_module(mod: tvm.IRModule, params: Mapping[str, np.ndarray] | None = None, target: Any = None,
                   database: Any = None) -> relax.VMExecutable:
    """Compile ``(mod, params)`` for ``target`` (default: the host CPU) with `tvm.compile`.

    With a MetaSchedule ``database``, its best schedules are applied to the legalized
    module (`legalize`) with ``MetaScheduleApplyDatabase`` inside
    ``with target, database, PassContext(opt_level=3)`` before compiling; PrimFuncs the
    database has no record for stay untuned.
    """
    target = as_target(target)
    return compile_lowered(legalize(mod, params, target), target, database)


def compile_lowered(lowered: tvm.IRModule, target: Any = None, database: Any = None) -> relax.VMExecutable:
    """`compile_module` for a module `legalize` already produced (with ``database`` applied first)."""
    target = as_target(target)
    if database is not None:
        lowered = apply_database(lowered, target, database)
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.compile(lowered, target=target)


def flatten_outputs(value: Any) -> list[np.ndarray]:
    """A VM result (a tensor, a nested tuple of tensors, local or over RPC, or a scalar) as a flat
    list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, (int, float)):
        return [np.asarray(value)]
    out = []
    for item in value:
        out += flatten_outputs(item)
    return out


def input_tensors(inputs: Any, device: Any = None) -> list[tvm.runtime.Tensor]:
    """``main``'s arguments on `device` (default CPU): `inputs` is one array / torch tensor, or one
    per model input."""
    dev = device or tvm.cpu()
    return [tvm.runtime.tensor(x, dev) for x in _as_arrays(inputs)]


def _as_arrays(inputs: Any) -> list[np.ndarray]:
    if hasattr(inputs, "detach") or isinstance(inputs, np.ndarray):
        inputs = [inputs]
    arrays = []
    for x in inputs:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        arrays.append(np.ascontiguousarray(np.asarray(x)))
    return arrays


def load_vm(executable_or_path: Any, device: Any = None) -> relax.VirtualMachine:
    """A Relax VM on ``device`` (default CPU) for an executable, a loaded module, or a `.so` path."""
    dev = device or tvm.cpu()
    if isinstance(executable_or_path, relax.VirtualMachine):
        return executable_or_path
    if isinstance(executable_or_path, (str, os.PathLike)):
        executable_or_path = tvm.runtime.load_module(os.fspath(executable_or_path))
    return relax.VirtualMachine(executable_or_path, dev)


def run(executable: Any, inputs: Any, device: Any = None) -> list[np.ndarray]:
    """Run ``main`` once on ``inputs`` (an array / tensor, or one per model input) with the Relax VM.

    ``executable`` is what `compile_module` returns, a module loaded from an exported
    `.so`, a path to one, or a `relax.VirtualMachine` (reuse it to avoid re-creating it).
    Returns the outputs as a flat list of numpy arrays (a tuple output is flattened).
    """
    vm = load_vm(executable, device)
    return flatten_outputs(vm["main"](*input_tensors(inputs, device)))


def _triple(target: tvm.target.Target) -> str:
    return str(target.attrs.get("mtriple", "") or "")


def is_cross_target(target: Any) -> bool:
    """Whether ``target`` names a machine other than this one (by its ``mtriple``)."""
    triple = _triple(as_target(target))
    if not triple:
        return False
    arch = triple.split("-")[0]
    host = platform.machine().lower()
    return not (arch == host or (arch in ("x86_64", "amd64") and host in ("x86_64", "amd64")))


def cross_compiler_for(target: Any) -> str:
    """The name of the Debian cross C++ compiler that links for ``target``'s ``mtriple``."""
    triple = _triple(as_target(target))
    arch = triple.split("-")[0]
    if "android" in triple:
        raise ValueError(f"target {triple}: link Android libraries with the NDK, e.g. "
                         "fcompile=tvm.support.ndk.create_shared (set TVM_NDK_CC)")
    if arch in ("aarch64", "arm64"):
        return CROSS_COMPILERS["aarch64"][0]
    if arch.startswith("arm") and triple.endswith("gnueabihf"):
        return CROSS_COMPILERS["arm"][0]
    raise ValueError(f"no known cross compiler for mtriple {triple!r}; pass cc= or fcompile= explicitly")


def export_library(executable: relax.VMExecutable, path: str | os.PathLike, target: Any = None,
                   cc: str | None = None, fcompile: Callable | None = None,
                   options: Sequence[str] | None = None) -> str:
    """Export ``executable`` to a shared library at ``path`` and return the path.

    ``target`` (a Target, dict, tag, or a device preset with ``.target`` and ``.export``)
    must be the target the executable was compiled for: when it names another
    machine (``mtriple`` aarch64-linux-gnu or arm*-linux-gnueabihf), the library is
    linked with the matching cross compiler (see `CROSS_COMPILERS`).  ``cc`` (a compiler
    name) or ``fcompile`` (a TVM compile function, e.g. ``tvm.support.ndk.create_shared``)
    override the choice; ``options`` are extra linker flags.
    """
    from tvm.support import cc as tvm_cc

    path = os.fspath(path)
    if fcompile is None and cc is None and not isinstance(target, (tvm.target.Target, dict, str, type(None))):
        fcompile = getattr(target, "export", None)  # a device preset's own compile function
    if fcompile is None:
        if cc is None and target is not None and is_cross_target(target):
            cc = cross_compiler_for(target)
        if cc is not None:
            if shutil.which(cc) is None:
                pkgs = {c: p for c, p in CROSS_COMPILERS.values()}
                hint = f" (apt-get install {pkgs[cc]})" if cc in pkgs else ""
                raise FileNotFoundError(f"cross compiler '{cc}' not found on PATH{hint}")
            fcompile = tvm_cc.cross_compiler(cc, options=list(options or []))
        elif options:
            fcompile = tvm_cc.cross_compiler(tvm_cc.create_shared, options=list(options))
    executable.export_library(path, fcompile=fcompile)
    return path


def _elf_field(path: str | os.PathLike, offset: int) -> int:
    """A 2-byte field of an ELF header, in the file's byte order; ValueError if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    return int.from_bytes(head[offset:offset + 2], "little" if head[5] == 1 else "big")


def elf_machine(path: str | os.PathLike) -> int:
    """The ``e_machine`` field of an ELF file (`EM_AARCH64` = 183, `EM_ARM` = 40, `EM_X86_64` = 62).

    Raises `ValueError` if ``path`` is not an ELF file."""
    return _elf_field(path, 18)


def elf_type(path: str | os.PathLike) -> int:
    """The ``e_type`` field of an ELF file (3 = ET_DYN, a shared object)."""
    return _elf_field(path, 16)


__all__ = ["flatten_outputs", "as_target", "bind_params", "legalize", "apply_database", "compile_module", "compile_lowered", "run", "load_vm", "input_tensors",
           "export_library",
           "cross_compiler_for", "is_cross_target", "elf_machine", "elf_type", "CROSS_COMPILERS",
           "EM_ARM", "EM_AARCH64", "EM_X86_64"]
