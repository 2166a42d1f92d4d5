#!/usr/bin/env bash
# Runs each fuzz target of tests/it/fuzz/ for a chosen time, with fresh seeds,
# and prints the cases run and the failures of each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS is per target (default 60); TARGETs are test names such as
# `deb_package` or `version_vs_dpkg` (default: every target). Each round runs
# the fuzz tests of `cargo test --test it` with KILN_FUZZ_CASES and a new KILN_FUZZ_SEED,
# doubling the cases until a round takes a few seconds. A failing case
# prints its seed: replay it with KILN_FUZZ_REPLAY=SEED cargo test --test it TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
# Build once, then run the test binary itself: no cargo start-up per round.
# The fuzz targets are the `fuzz::` module of the one integration-test crate.
bin=$(cargo test --test it --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*/deps/it-[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "cannot build the fuzz tests" >&2; cargo test --test it --no-run; exit 1; }
listing=$("$bin" --list 2>/dev/null | grep '^fuzz::')

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # Every fuzz target: the tests that use the harness (regressions are plain tests).
  mapfile -t targets < <(grep -v '^fuzz::regressions::' <<<"$listing" | sed -n 's/^fuzz::[a-z]*::\([a-z0-9_]*\): test$/\1/p')
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
summary=()
for t in "${targets[@]}"; do
  total=0 failed=0 rounds=0 pairs=0 cases=8
  end=$((SECONDS + secs))
  while [ $SECONDS -lt "$end" ]; do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    started=$SECONDS
    KILN_FUZZ_SEED=$seed KILN_FUZZ_CASES=$cases RUST_BACKTRACE=0 \
      "$bin" --exact --nocapture --test-threads 1 "$(sed -n "s/^\(fuzz::[a-z]*::$t\): test$/\1/p" <<<"$listing")" \
      >"$log" 2>&1 || true
    line=$(grep -o "fuzz-result target=$t cases=[0-9]* failures=[0-9]*" "$log" | tail -1 || true)
    if [ -z "$line" ]; then
      echo "$t: no result (did it build, or hang?); last output:" >&2
      tail -20 "$log" >&2
      failed=$((failed + 1))
      status=1
      break
    fi
    n=$(sed 's/.*cases=\([0-9]*\).*/\1/' <<<"$line")
    f=$(sed 's/.*failures=\([0-9]*\).*/\1/' <<<"$line")
    total=$((total + n))
    failed=$((failed + f))
    rounds=$((rounds + 1))
    p=$(grep -o 'pairs=[0-9]*' "$log" | tail -1 | cut -d= -f2 || true)
    pairs=$((pairs + ${p:-0}))
    if [ "$f" -gt 0 ]; then
      status=1
      grep -m1 'failing case' "$log" >&2 || true
    fi
    # Grow the rounds to a few seconds each, without passing the deadline.
    if [ $((SECONDS - started)) -lt 5 ]; then
      cases=$((cases * 2))
    fi
  done
  extra=""
  [ "$pairs" -gt 0 ] && extra=" dpkg_pairs=$pairs"
  summary+=("$(printf '%-28s cases=%-9s failures=%-4s rounds=%s%s' "$t" "$total" "$failed" "$rounds" "$extra")")
  echo "${summary[-1]}"
done
echo "--- fuzz summary (${secs}s per target) ---"
printf '%s\n' "${summary[@]}"
exit $status
