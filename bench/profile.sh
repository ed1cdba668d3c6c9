#!/usr/bin/env bash
# Record a py-spy profile of tidings under fan-out load, to explain a missed target.
#
#   bench/profile.sh [RATE_MSGS_PER_S] [SUBSCRIBERS] [SECONDS] [SIZE]
#   (defaults: 150 msg/s, 1000 subscribers, 15 s, 128 B)
#
# tidings runs on core 1, the generator and py-spy on core 0. Writes
# bench/results/profile-<rate>x<subs>.svg (flame graph) and a speedscope JSON in
# bench/results/raw/ (open it at speedscope.app). Needs `make bench-build bench-deps`.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-150}
SUBS=${2:-1000}
SECS=${3:-15}
SIZE=${4:-128}
PY=.venv/bin/python
PYSPY=bench/.venv-peers/bin/py-spy
mkdir -p bench/results/raw/logs
read -r PORT API <<<"$($PY -c 'import socket
def p():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); n = s.getsockname()[1]; s.close(); return n
print(p(), p())')"
taskset -c 1 $PY -m tidings serve --config bench/tidings-bench.toml --port "$PORT" --api-port "$API" \
    >bench/results/raw/logs/profile-server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.2
done
taskset -c 0 bench/build/wsbench --port "$PORT" --conns "$SUBS" --size "$SIZE" --rates "$RATE" \
    --step $((SECS + 6)) --server-pid "$SERVER" --max-seconds $((SECS + 60)) \
    --out bench/results/raw/profile-run.json 2>bench/results/raw/logs/profile-wsbench.log &
GEN=$!
sleep 3
NAME="profile-${RATE}x${SUBS}"
taskset -c 0 "$PYSPY" record --pid "$SERVER" --duration "$SECS" --rate 100 --nonblocking \
    -o "bench/results/$NAME.svg"
taskset -c 0 "$PYSPY" record --pid "$SERVER" --duration 3 --rate 100 --nonblocking \
    --format speedscope -o "bench/results/raw/$NAME.speedscope.json" || true
wait $GEN || true
grep -E '^step' bench/results/raw/logs/profile-wsbench.log || true
echo "flame graph: bench/results/$NAME.svg"
