#!/usr/bin/env bash
# Creates (once) and prints the path of the project's virtual environment. It lives outside the
# repository, keyed by a hash of the pinned dependencies in pyproject.toml (runtime and test; the bench
# extra is installed by hand), so warm runs reuse it and a changed pin builds a new one.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}
mkdir -p "$cache"
key=$(python3 -c 'import sys, tomllib, json, hashlib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = [project["requires-python"], project["dependencies"], project.get("optional-dependencies", {}).get("test")]
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:12])' "$root/pyproject.toml")
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
# The editable install points at whichever checkout (and packaging metadata) made it: redo it (cheap,
# no dependencies) when this checkout or its pyproject.toml differs.
stamp="$root:$(sha256sum "$root/pyproject.toml" | cut -c1-12)"
if [ "$(cat "$venv/.editable" 2>/dev/null)" != "$stamp" ]; then
  "$venv/bin/pip" install -q --no-deps -e "$root" >&2
  echo "$stamp" > "$venv/.editable"
fi
echo "$venv"
