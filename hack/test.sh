#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs the whole suite (unit, trainer,
# runtime, and the cluster tests against the local control plane). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/hack/install-deps.sh" | tail -n 1)
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
