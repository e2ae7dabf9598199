"""`gos-tvm demo`: one operator as a program of primitive instructions, lowered to torch and
to TVM, checked to compute the same function as torch.nn.functional."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show a conv2d as a program of primitive instructions and check its lowerings")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .instructions import compile_program, library, to_torch

    torch.manual_seed(args.seed)
    c, s = args.channels, args.size
    program = library.conv2d((1, c, s, s), 2 * c, 3, padding=1)
    print(program)
    module = to_torch(program)
    x = torch.randn(1, c, s, s)
    ref = F.conv2d(x, module.weights["weight"], module.weights["bias"], padding=1).detach().numpy()
    got_torch = module(x).detach().numpy()
    got_tvm = compile_program(program)([x.numpy()], module.weight_arrays())
    rel = lambda a: float(np.linalg.norm(a - ref) / np.linalg.norm(ref))  # noqa: E731
    print(f"\nrelative error vs torch.nn.functional.conv2d: torch lowering {rel(got_torch):.2e}, "
          f"TVM build {rel(got_tvm):.2e}")
    ok = max(rel(got_torch), rel(got_tvm)) < 1e-4
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1
