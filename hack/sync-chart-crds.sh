#!/usr/bin/env bash
# Copies the CRDs (crds/*.yaml, the source of truth) into the Helm chart's crds/ directory, byte for byte,
# and removes chart copies whose source is gone. tests/chart checks the two stay identical.
# Usage: hack/sync-chart-crds.sh          (copy)
#        hack/sync-chart-crds.sh --check  (exit 1 and name the files when they differ; copy nothing)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/crds
dst=$root/charts/modelfleet/crds
mode=${1:-sync}
case $mode in sync|--check) ;; *) echo "usage: $0 [--check]" >&2; exit 2 ;; esac
mkdir -p "$dst"
stale=0
for file in "$src"/*.yaml; do
  target=$dst/$(basename "$file")
  if ! cmp -s "$file" "$target"; then
    if [ "$mode" = --check ]; then echo "out of date: ${target#"$root"/}" >&2; stale=1; else cp "$file" "$target"; fi
  fi
done
for target in "$dst"/*.yaml; do
  [ -e "$target" ] || continue
  if [ ! -e "$src/$(basename "$target")" ]; then
    if [ "$mode" = --check ]; then echo "no source for: ${target#"$root"/}" >&2; stale=1; else rm "$target"; fi
  fi
done
exit $stale
