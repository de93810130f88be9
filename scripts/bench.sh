#!/usr/bin/env bash
# Runs the side-by-side benchmark (our router, nats-server, a bare TLS
# forwarder) with a bounded time, then profiles our router on a short run.
# Writes results/bench.md, results/bench.svg, results/bench.txt and
# results/profile.txt.
#
#   scripts/bench.sh                 # full counts
#   SCALE=0.1 scripts/bench.sh       # quick run
#   PROFILE=0 scripts/bench.sh --only w1,w2
#
# Environment: SCALE (default 1.0), LIMIT seconds per workload and system
# (default 60), TOTAL seconds for the whole comparison (default 1800),
# PROFILE=0 to skip the profile. Extra arguments go to exocom-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1.0}
LIMIT=${LIMIT:-60}
TOTAL=${TOTAL:-1800}
PROFILE=${PROFILE:-1}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=results

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    apt-cache policy nats-server
    apt-get update && apt-get install -y nats-server
fi
NATS=$(command -v nats-server || echo /usr/sbin/nats-server)

cargo build --release --features bench --bin exocom-bench
BIN=$TARGET/release/exocom-bench
mkdir -p "$OUT"

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(git rev-parse --short HEAD) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "# $("$NATS" --version)"
} > "$OUT/bench.txt"
timeout --kill-after=10 "$TOTAL" "$BIN" --scale "$SCALE" --limit-secs "$LIMIT" --out "$OUT" \
    --nats-server "$NATS" "$@" | tee -a "$OUT/bench.txt"

[ "$PROFILE" = 1 ] || exit 0

# Profile: our router alone (a child process) under W2 and W1, sampled by
# perf if the kernel lets us, else skipped (docs/PERFORMANCE.md, "Where the
# router's time goes", has the perf command with call stacks).
if ! perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
    echo "perf cannot sample here; skipping the profile" >&2
    exit 0
fi
rm -f "$OUT/router.pid"
timeout 300 "$BIN" --systems ours --only w2,w1 --scale 0.3 --limit-secs 60 --out "$OUT/profile-run" \
    --router-pid-file "$OUT/router.pid" --attach-wait 2 > "$OUT/profile-run.txt" 2>&1 &
BENCH=$!
for _ in $(seq 50); do [ -s "$OUT/router.pid" ] && break; sleep 0.1; done
perf record -e cpu-clock -F 999 -g -p "$(cat "$OUT/router.pid")" -o "$OUT/perf.data" 2>/dev/null &
PERF=$!
wait "$BENCH" || true
kill -INT "$PERF" 2>/dev/null || true
wait "$PERF" || true
perf report -i "$OUT/perf.data" --stdio --no-children --percent-limit 0.8 --sort dso,symbol -g none 2>/dev/null \
    | grep -v '^$' | head -150 > "$OUT/profile.txt"
perf report -i "$OUT/perf.data" --stdio --children --percent-limit 3 --sort symbol -g none 2>/dev/null \
    | grep -v '^$' | head -80 > "$OUT/profile-inclusive.txt"
echo "profile: $OUT/profile.txt, $OUT/profile-inclusive.txt"
