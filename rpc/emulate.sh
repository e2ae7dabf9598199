#!/usr/bin/env bash
# An emulated Raspberry Pi 3 (64-bit) in the RPC pool: builds, once and as root, an aarch64 Debian
# rootfs with the aarch64 TVM runtime (qemu-user via binfmt_misc; cached in
# ~/.cache/gos_tvm/emulated/rasp3b-aarch64), then serves it under the tracker until Ctrl-C.
#
#   rpc/emulate.sh [TRACKER_HOST:PORT] [KEY]        # default 127.0.0.1:9190, key rasp3b-aarch64-emulated
#   rpc/emulate.sh --build-only
#
# Compile and measure with gos_tvm.hw.emulate.emulated_preset("rasp3b-aarch64"): its results are
# labelled EMULATED.  Emulation timings are qemu timings, never Raspberry Pi timings.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--build-only" ]; then
    exec python3 -m gos_tvm.hw.rpc_cli emulate rasp3b-aarch64 --build-only
fi
tracker="${1:-${TVM_TRACKER_HOST:-127.0.0.1}:${TVM_TRACKER_PORT:-9190}}"
key="${2:-rasp3b-aarch64-emulated}"
exec python3 -m gos_tvm.hw.rpc_cli emulate rasp3b-aarch64 --tracker "$tracker" --key "$key"
