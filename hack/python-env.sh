#!/usr/bin/env bash
# Creates (once) and prints the path of the project's virtual environment. It lives outside the
# repository, keyed by a hash of pyproject.toml, so warm runs reuse it and a changed pin builds a new one.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}
mkdir -p "$cache"
key=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv=$cache/venv-$key
exec 9>"$cache/.venv-$key.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -e "$root[test]" >&2
  touch "$venv/.complete"
fi
# The editable install points at whichever checkout made the venv; re-point it at this one (cheap).
if ! "$venv/bin/python" -c "import modelfleet, sys; sys.exit(0 if modelfleet.__file__.startswith('$root/') else 1)" 2>/dev/null; then
  "$venv/bin/pip" install -q --no-deps -e "$root" >&2
fi
echo "$venv"
