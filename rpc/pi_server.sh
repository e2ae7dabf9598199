#!/usr/bin/env bash
# Run ON THE RASPBERRY PI: register it with the host's tracker.
#   ./pi_server.sh TRACKER_HOST[:PORT] [KEY]
# KEY defaults to rasp3b-aarch64 on a 64-bit OS and rasp3b on a 32-bit one, matching the presets.
# Needs the TVM runtime's Python package on the Pi (see rpc/README.md, "Raspberry Pi 3").
# Written from TVM's documented set-up; NOT run on a real board by this project (see README).
set -euo pipefail
TRACKER="${1:?usage: pi_server.sh TRACKER_HOST[:PORT] [KEY]}"
case "$TRACKER" in *:*) ;; *) TRACKER="$TRACKER:9190";; esac
case "$(uname -m)" in
  aarch64) DEFAULT_KEY=rasp3b-aarch64 ;;
  armv7l|armv6l) DEFAULT_KEY=rasp3b ;;
  *) echo "warning: $(uname -m) is not a Raspberry Pi 3 architecture" >&2; DEFAULT_KEY=rasp3b ;;
esac
KEY="${2:-$DEFAULT_KEY}"
if python3 -c "import gos_tvm" 2>/dev/null; then
  exec python3 -m gos_tvm.hw.rpc_cli server --tracker "$TRACKER" --key "$KEY" --host 0.0.0.0 --port 9090
fi
# Without gos_tvm on the board, TVM's own server does the same job (mind --port-end).
exec python3 -m tvm.exec.rpc_server --tracker "$TRACKER" --key "$KEY" --host 0.0.0.0 --port 9090 --port-end 9110
