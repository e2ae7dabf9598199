#!/usr/bin/env bash
# Stop the servers started by rpc/start_local_servers.sh (each in its own process group).
set -uo pipefail
DIR="$(cd "$(dirname "$0")" && pwd)"
PIDS="$DIR/.local_servers.pids"
[ -f "$PIDS" ] || { echo "no servers recorded in $PIDS"; exit 0; }
while read -r pid; do
  kill -TERM -- "-$pid" 2>/dev/null || true
done < "$PIDS"
rm -f "$PIDS"
