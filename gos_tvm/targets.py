"""The one place CPU targets are built: every target we compile, tune, capture or export for
comes from `cpu_target`, so every one carries `LLVM_CL_OPT`.

Kept at the package root, below `instructions`, `graph` and `hw`, which all build targets.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import tvm

#: LLVM flags for every CPU target we build: TVM's bundled LLVM miscompiles some small
#: loop nests in its SLP vectorizer ("Instruction does not dominate all uses", e.g. a 1x1
#: conv with bias on a 2x5 image).  TVM vectorises explicitly through the schedule, so
#: LLVM's own straight-line vectorizer is not what makes tuned code fast.
LLVM_CL_OPT: tuple[str, ...] = ("-vectorize-slp=false",)


def cpu_target_config(num_cores: int | None = None, **attrs: Any) -> dict[str, Any]:
    """The config dict of an llvm CPU target: `num-cores` (default: this host's core count; MetaSchedule
    refuses an llvm target without it), `cl-opt` = `LLVM_CL_OPT`, and `attrs` (e.g. ``tag="arm/rasp3b"``,
    ``mtriple=...``, ``mcpu=...``, ``mattr=[...]``; underscores in names become dashes).  Without a
    ``tag`` the kind is llvm."""
    config: dict[str, Any] = {} if "tag" in attrs else {"kind": "llvm"}
    for name, value in attrs.items():
        if value is not None:
            config[name.replace("_", "-")] = value
    config["num-cores"] = int(num_cores or os.cpu_count() or 1)
    config["cl-opt"] = list(LLVM_CL_OPT)
    return config


def cpu_target(num_cores: int | None = None, **attrs: Any) -> "tvm.target.Target":
    """`tvm.target.Target(cpu_target_config(num_cores, **attrs))`: with no arguments, this host's CPU
    (generic, no ``mcpu``) as MetaSchedule wants it."""
    import tvm

    return tvm.target.Target(cpu_target_config(num_cores, **attrs))


__all__ = ["LLVM_CL_OPT", "cpu_target", "cpu_target_config"]
