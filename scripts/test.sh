#!/usr/bin/env bash
# Sets up a fresh machine (apt packages, npm ci, build) and runs the whole test suite.
# Needs root: the datapath and end-to-end tests create network namespaces, tc filters, pinned
# maps and processes (each test removes what it made, also when it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npm run typecheck
npm run lint

out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
npm test 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
# tap's closing line is `# { total: N, pass: N, fail: N, ... }`; say it plainly as well.
summary=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1 || true)
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
echo "tests: ${pass:-0} passed, ${fail:-0} failed"
# The coverage table pushes tap's failure report far up the log; repeat which tests failed last,
# from the raw TAP tap saves per file, so the end of a CI log is enough to start from.
if [ "$status" -ne 0 ] && [ -d .tap/test-results ]; then
  echo "failed:"
  grep -rn -A 6 -E '^[[:space:]]*not ok ' .tap/test-results | sed 's|^\.tap/test-results/||' | head -n 80 || true
fi
exit "$status"
