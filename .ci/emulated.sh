#!/usr/bin/env bash
# CI tier: the board path on an emulated Raspberry Pi 3 (aarch64 Debian rootfs under qemu-user).
# Builds the emulated device once (cached in ~/.cache/gos_tvm/emulated, ~6-10 min, needs root and
# binfmt_misc), then runs tests/test_emulated.py against it.  When this machine cannot build the
# device (not root, no binfmt_misc, no network for debootstrap/pip...), prints 'skipped: <reason>'
# and exits 0; any other failure fails.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
python3 -m gos_tvm.hw.rpc_cli emulate rasp3b-aarch64 --build-only 2> >(tee "$log" >&2)
rc=$?
wait
if [ "$rc" -eq 4 ]; then
    reason=$(grep -m1 '^error: ' "$log" | sed 's/^error: //')
    echo "skipped: emulated rasp3b-aarch64 device cannot be built here: ${reason:-see the log above}"
    exit 0
elif [ "$rc" -ne 0 ]; then
    echo "emulated device build failed (exit $rc)" >&2
    exit "$rc"
fi
echo "emulated device ready ($(( $(date +%s) - start )) s)"
GOS_TVM_EMULATED=1 python3 -m pytest -q -rs tests/test_emulated.py
