#!/usr/bin/env bash
# Installs everything the tests and the demo need, from scratch or incrementally:
#   - Debian packages (openssl for the local cluster's certificates, prometheus for the metrics tests)
#   - the Python virtual environment with every pinned dependency (hack/python-env.sh)
#   - the control plane's binaries, built from Go modules (hack/build-binaries.sh)
# Prints the virtual environment's path on its last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v flock >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v go >/dev/null || { echo "Go is required to build the local control plane (https://go.dev/dl)" >&2; exit 1; }

start=$SECONDS
venv=$(bash "$here/python-env.sh")
echo "python environment ready in $((SECONDS - start))s: $venv" >&2
start=$SECONDS
bash "$here/build-binaries.sh" >/dev/null
echo "control plane binaries ready in $((SECONDS - start))s" >&2
echo "$venv"
