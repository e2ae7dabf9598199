#!/usr/bin/env bash
# What a tracker holds: servers, keys, free/busy/pending.   rpc/query.sh [HOST] [PORT] [--json]
set -euo pipefail
HOST="${1:-${TVM_TRACKER_HOST:-127.0.0.1}}"
PORT="${2:-${TVM_TRACKER_PORT:-9190}}"
shift $(( $# > 2 ? 2 : $# )) || true
exec python -m gos_tvm.hw.rpc_cli query --tracker "$HOST:$PORT" "$@"
