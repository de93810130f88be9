#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, one after the other, and
# prints executions and crashes per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all targets)
#
# Needs cargo-fuzz (installed from crates.io when missing). On a stable
# toolchain RUSTC_BOOTSTRAP=1 enables the nightly flags cargo-fuzz passes.
# FUZZ_SANITIZER=address|none (default address; none when ASan is unavailable).
# Crash inputs land in fuzz/artifacts/<target>/; the corpus grows in a scratch
# copy under fuzz/work/ so fuzz/corpus/ stays the small checked-in seed set.
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}-fuzz}"
sanitizer="${FUZZ_SANITIZER:-address}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

cargo fuzz build --fuzz-dir fuzz -s "$sanitizer" -O

summary=()
status=0
for t in "${targets[@]}"; do
    work="fuzz/work/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    cp -n fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true
    log="fuzz/work/$t.log"
    before="$(find "fuzz/artifacts/$t" -type f | wc -l)"
    echo "== $t for ${seconds}s" >&2
    set +e
    cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" -O "$t" "$work" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    set -e
    execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -1)"
    rate="$(grep -E '^stat::average_exec_per_sec' "$log" | awk '{print $2}' | tail -1)"
    crashes="$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))"
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="1 (exit $rc, see $log)"; fi
    [ "$rc" -ne 0 ] && status=1
    summary+=("$(printf '%-18s executions %-12s exec/s %-8s crashes %s' "$t" "${execs:-?}" "${rate:-?}" "$crashes")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$status"
