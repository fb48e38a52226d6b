#!/usr/bin/env bash
# Sets up a fresh machine and runs the demo: the seed's two policies, end to end, in namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/warden.js demo "$@"
