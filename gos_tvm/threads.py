"""How many threads TVM's CPU runtime runs kernels with, set once per process.

TVM's runtime takes its thread count from ``TVM_NUM_THREADS``, else ``OMP_NUM_THREADS``, else
``std::thread::hardware_concurrency()``, halved on x86 to skip hyper-threads -- and it asks again at
*every* parallel loop it launches.  With neither variable set, both halves of that hurt (measured on
a 2-core x86 VM, a 14x14x32 element-wise kernel; `benchmarks/results/runtime_threads.json`):

* every parallel launch re-reads ``/sys/devices/system/cpu/online`` (glibc's ``get_nprocs``): three
  system calls, 6.6 us per kernel call against 0.5-0.9 us with the variable set, more than most of
  a small model's kernels compute (a digits CNN: 172 us per inference against 67 us);
* the pool has one thread: a 2-vCPU host counts as one hyper-threaded core, so every tuned kernel
  ran on half the machine while onnxruntime and PyTorch used all of it.

So gos_tvm sets ``TVM_NUM_THREADS`` on import when the user has set neither variable, before any
TVM thread pool exists; processes we start (RPC servers, MetaSchedule's builder and runner workers)
inherit it.  A deployment process that loads an exported ``.so`` should set it too.

Kept at the package root, like `targets`: importing it must not import TVM.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The variables TVM's runtime reads, in its order.
THREAD_VARIABLES: tuple[str, ...] = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")

_CPU_SYSFS = Path("/sys/devices/system/cpu")


def host_cores() -> int:
    """Physical cores this process may run on: the CPUs in its affinity mask, counting SMT siblings
    (same package and core id) once; the affinity count where the topology is not readable."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = _CPU_SYSFS / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def configure_runtime_threads(threads: int | None = None, *, override: bool = False) -> int:
    """Set ``TVM_NUM_THREADS`` to `threads` (default `host_cores()`) unless the user already chose a
    count through ``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS`` (or `override`); return the count TVM will
    use.  Call it before TVM runs its first parallel kernel in this process: the pool is sized then."""
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not override:
        for name in THREAD_VARIABLES:
            value = os.environ.get(name, "").strip()
            if value:
                try:
                    return max(1, int(value))
                except ValueError:
                    raise ValueError(f"{name}={value!r} is not a thread count: set it to a positive integer "
                                     f"or unset it (gos_tvm then uses this host's {host_cores()} cores)") from None
    count = int(threads or host_cores())
    os.environ["TVM_NUM_THREADS"] = str(count)
    return count


__all__ = ["THREAD_VARIABLES", "configure_runtime_threads", "host_cores"]
