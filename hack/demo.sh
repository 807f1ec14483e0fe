#!/usr/bin/env bash
# The README's first command: installs what is needed, then runs the whole lifecycle on the embedded
# local cluster (`modelfleet demo`). Extra arguments go to `modelfleet demo`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/hack/install-deps.sh" | tail -n 1)
cd "$root"
exec "$venv/bin/modelfleet" demo "$@"
