"""TVM's runtime thread count: gos_tvm sets it on import (unless the user chose one), and the RPC
servers it starts share the host's cores between them (`gos_tvm.threads`)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gos_tvm.threads import THREAD_VARIABLES, configure_runtime_threads, host_cores

_REPORT = ("import gos_tvm, os, tvm, tvm_ffi; "
           "print(tvm_ffi.get_global_func('runtime.NumThreads')(), os.environ.get('TVM_NUM_THREADS'))")


def _fresh_process(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", _REPORT], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_import_gives_tvm_every_core_unless_the_user_chose_a_count():
    assert _fresh_process() == [str(host_cores()), str(host_cores())]
    assert _fresh_process(TVM_NUM_THREADS="1") == ["1", "1"]
    # OMP_NUM_THREADS is TVM's second choice: kept, and TVM_NUM_THREADS stays unset
    assert _fresh_process(OMP_NUM_THREADS="1") == ["1", "None"]


def test_bad_thread_counts_are_named(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="TVM_NUM_THREADS='two' is not a thread count"):
        configure_runtime_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        configure_runtime_threads(0)
    assert configure_runtime_threads(3, override=True) == 3 and os.environ["TVM_NUM_THREADS"] == "3"


def test_host_cores_counts_cores_this_process_may_use():
    assert 1 <= host_cores() <= len(os.sched_getaffinity(0))
