#!/usr/bin/env bash
# Register this machine's CPU with a tracker as N RPC servers under KEY (default: 2 servers, key "local").
#   rpc/start_local_servers.sh [N] [KEY] [TRACKER_HOST:PORT]
# The servers run in the background; their PIDs are written to rpc/.local_servers.pids and
# `rpc/stop_local_servers.sh` stops them.  Several servers under one key are measured in parallel
# (on a small machine they share its cores: use 1 server per 2 cores for stable timings).
set -euo pipefail
N="${1:-2}"
KEY="${2:-local}"
TRACKER="${3:-${TVM_TRACKER_HOST:-127.0.0.1}:${TVM_TRACKER_PORT:-9190}}"
DIR="$(cd "$(dirname "$0")" && pwd)"
PIDS="$DIR/.local_servers.pids"
for i in $(seq 1 "$N"); do
  PORT=$((9090 + 20 * i))
  setsid python -m gos_tvm.hw.rpc_cli server --tracker "$TRACKER" --key "$KEY" \
      --host 127.0.0.1 --port "$PORT" --port-end $((PORT + 20)) \
      > "$DIR/.server_$i.log" 2>&1 &
  echo $! >> "$PIDS"
done
sleep 1
python -m gos_tvm.hw.rpc_cli query --tracker "$TRACKER" || true
