#!/usr/bin/env bash
# Counts the instructions our router and our relays execute per unit of
# work (message, delivery or round trip), under valgrind's callgrind, and
# the calls they make to the allocator (alloc, alloc_zeroed, realloc).
# Unlike a timing, the count hardly depends on what else the machine does
# (W2 repeats within about 0.3 % for the router and 1 % for the relays),
# so it can tell apart two builds whose timings drown in the noise.
#
#   scripts/instructions.sh                          # W1 and W2, target/release/exocom-bench
#   scripts/instructions.sh /tmp/before /tmp/after   # compare two builds, side by side
#   ONLY=w2,w4 SCALE=0.04 scripts/instructions.sh
#
# What it counts: the router (the benchmark's child process, which exits
# when the benchmark is done with it) and the benchmark process, which
# runs our relays. Each workload runs at SCALE and at twice SCALE; the
# difference in instructions divided by the difference in units removes
# the start-up (certificates, handshakes, key announcements). Units are
# counted as the benchmark does (W1: round trips, warm-up included; W4:
# both rows together).
#
# Caveats: valgrind runs one thread at a time, so batching differs from a
# real run. It does not run SHA extensions, so ring takes its AVX SHA-256
# path, several times the instructions of the SHA-NI path a modern CPU
# uses: the relays' totals overstate the sealing's share, and the
# router's its audit chain's. Runs vary as their batching and wake-ups
# do: W1 (one round trip at a time, a wake-up or two more or less each)
# by ~1 %, like the relays in W2.
# Needs valgrind (Debian's package); about 30 s per workload and build at
# the defaults.
#
# Environment: ONLY (default w1,w2), SCALE (default 0.02 for W2-W6, and
# 0.05 for W1). Arguments: exocom-bench binaries (default: a release build
# of this checkout, built with the bench feature).
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY=${ONLY:-w1,w2}
if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind is needed (apt-get install -y valgrind)" >&2
    exit 1
fi
if [ $# -eq 0 ]; then
    cargo build --release --features bench --bin exocom-bench
    set -- "${CARGO_TARGET_DIR:-target}/release/exocom-bench"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Calls to Rust's allocator entry points recorded in callgrind file $1
# (0 when the file is missing). Callgrind names a function in full once,
# then by its number ("fn=(12) name" or "cfn=(12) name", later
# "cfn=(12)"); each call site's count is on the "calls=" line after it.
allocations() {
    [ -f "$1" ] || { echo 0; return; }
    awk '
        function named(s,   id, rest) {
            if (!match(s, /^\([0-9]+\)/)) { name[s] = s; return s }
            id = substr(s, RSTART, RLENGTH); rest = substr(s, RLENGTH + 2)
            if (rest != "") name[id] = rest
            return id
        }
        /^fn=/ { named(substr($0, 4)); next }
        /^cfn=/ { cur = named(substr($0, 5)); next }
        /^calls=/ { split(substr($0, 7), a, " "); n[cur] += a[1] }
        END {
            for (k in n) if (name[k] ~ /__rust_(alloc|alloc_zeroed|realloc)$/) t += n[k]
            print t + 0
        }' "$1"
}

# Prints "<router instructions> <relays instructions> <units> <router
# allocations> <relays allocations>" for one run of binary $1, workload
# $2, scale $3.
count() {
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$work/cg.%p" \
        "$1" --systems ours --only "$2" --scale "$3" --out "$work/run" >"$work/log" 2>&1 || {
        cat "$work/log" >&2
        return 1
    }
    local bench_pid router_pid router relays units
    bench_pid=$(grep -m1 -E '^==[0-9]+== Command:' "$work/log" | sed -E 's/^==([0-9]+)==.*/\1/')
    router_pid=$(grep -E '^==[0-9]+== Command: .* serve-router' "$work/log" | sed -E 's/^==([0-9]+)==.*/\1/')
    collected() { { grep -E "^==$1== Collected :" "$work/log" || true; } | awk '{print $4}' | tr -d ,; }
    relays=$(collected "$bench_pid")
    router=$(collected "$router_pid")
    if [ -z "$relays" ]; then
        echo "$2: callgrind wrote no totals" >&2
        return 1
    fi
    # A build from before the router exited on end of input is killed: no totals.
    router=${router:-0}
    local router_allocs relays_allocs
    router_allocs=$(allocations "$work/cg.$router_pid")
    relays_allocs=$(allocations "$work/cg.$bench_pid")
    # "ours: 1241/s (20000/20000)" or "ours: p50 … (1000)"; W4 prints two rows.
    units=$(grep 'ours:' "$work/log" | sed -E 's/.*\(([0-9]+)(\/[0-9]+)?\).*/\1/' | awk '{s += $1} END {print s}')
    if [ "$2" = w1 ]; then
        # W1 prints the measured round trips; the warm-up is 1/20 of them.
        units=$((units + units / 20))
    fi
    rm -f "$work"/cg.*
    echo "$router $relays $units $router_allocs $relays_allocs"
}

per() { awk -v a="$1" -v b="$2" -v u="$3" 'BEGIN {printf "%.1f", (b - a) / u}'; }
printf '%-8s %12s %12s %8s %8s  %s\n' workload router relays allocs allocs "binary"
printf '%-8s %12s %12s %8s %8s\n' "" "instr/unit" "instr/unit" router relays
for w in ${ONLY//,/ }; do
    if [ "$w" = w1 ]; then scale=${SCALE:-0.05}; else scale=${SCALE:-0.02}; fi
    double=$(awk -v s="$scale" 'BEGIN {print s * 2}')
    for bin in "$@"; do
        read -r r1 c1 u1 ra1 ca1 < <(count "$bin" "$w" "$scale")
        read -r r2 c2 u2 ra2 ca2 < <(count "$bin" "$w" "$double")
        if [ "$u2" -le "$u1" ]; then
            echo "$w: no more units at scale $double than at $scale (time limit hit?)" >&2
            exit 1
        fi
        if [ "$r1" -gt 0 ] && [ "$r2" -gt 0 ]; then
            per_router=$(( (r2 - r1) / (u2 - u1) ))
            router_allocs=$(per "$ra1" "$ra2" $((u2 - u1)))
        else
            per_router="–"
            router_allocs="–"
        fi
        printf '%-8s %12s %12s %8s %8s  %s\n' "$w" "$per_router" "$(( (c2 - c1) / (u2 - u1) ))" \
            "$router_allocs" "$(per "$ca1" "$ca2" $((u2 - u1)))" "$bin"
    done
done
