#!/usr/bin/env bash
# kiln on a bad network (a measurement, not a gate): 20 pushes and 20 pulls of
# an image with two large layers through the seeded fault-injecting proxy of
# the tests (20 % of requests fail: 500, 503, 429 with Retry-After, resets,
# truncated answers), each checked with skopeo / a verified pull. It runs the
# test `twenty_pushes_and_pulls_through_a_proxy_failing_a_fifth_of_requests`
# with a bigger image than CI uses and prints its figures line.
#
# Usage:  bench/fault-bench.sh            # 100 MiB, the figure of issue 9
#         MB=24 bench/fault-bench.sh      # the size the test suite uses
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MB=${MB:-100}
cd "$REPO"
start=$(date +%s)
KILN_FAULT_IMAGE_MB=$MB cargo test --test it \
    registry_faults::twenty_pushes_and_pulls_through_a_proxy_failing_a_fifth_of_requests \
    -- --exact --nocapture 2>&1 | grep -E 'MiB image|^test |test result|push [0-9]+:|pull [0-9]+:'
printf '[fault-bench] %s MiB: %ss in all (build included)\n' "$MB" "$(( $(date +%s) - start ))"
