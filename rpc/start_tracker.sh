#!/usr/bin/env bash
# Start an RPC tracker: the pool that device servers register with and tuning jobs ask for devices.
#   rpc/start_tracker.sh [PORT] [HOST]        (default 9190 on 0.0.0.0, reachable by boards on the LAN)
# Wraps `gos-tvm rpc tracker`, which sets --port-end above --port (TVM's own script fixes it at 9199).
set -euo pipefail
PORT="${1:-${TVM_TRACKER_PORT:-9190}}"
HOST="${2:-0.0.0.0}"
exec python -m gos_tvm.hw.rpc_cli tracker --host "$HOST" --port "$PORT"
