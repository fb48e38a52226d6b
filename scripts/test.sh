#!/usr/bin/env bash
# Sets up a fresh machine (apt packages, npm ci, build) and runs the whole test suite.
# Needs root: the datapath tests create network namespaces, tc filters and pinned maps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npm run typecheck
npm test
