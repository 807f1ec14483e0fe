#!/usr/bin/env bash
# Installs everything the tests and the demo need, from scratch or incrementally:
#   - Debian packages (openssl for the local cluster's certificates, prometheus for the metrics tests, and
#     containerd, runc, CNI plugins, iptables, buildah, mmdebstrap for its real node and the images)
#   - the Python virtual environment with every pinned dependency (hack/python-env.sh)
#   - the control plane's binaries, built from Go modules (hack/build-binaries.sh)
# Prints the virtual environment's path on its last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Debian package -> a command (or file) it installs. The second group is the local cluster's real node: a container
# runtime, CNI plugins, iptables for Services and the firewall that keeps pod traffic on this machine, and the
# image tools (buildah builds images/*.Dockerfile, mmdebstrap the Debian base they start from).
packages=(
  openssl:openssl prometheus:prometheus util-linux:flock
  containerd:containerd runc:runc containernetworking-plugins:/usr/lib/cni/bridge iptables:iptables
  conntrack:conntrack iproute2:ip kmod:modprobe buildah:buildah mmdebstrap:mmdebstrap
)
missing=()
for entry in "${packages[@]}"; do
  file=${entry#*:}
  [ -e "$file" ] || command -v "$file" >/dev/null || missing+=("${entry%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]}; the local" \
         "cluster's real node needs root anyway)" >&2
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
if [ "$(id -u)" -eq 0 ]; then  # the real node's images (buildah needs root here); cached by content hash
  start=$SECONDS
  "$venv/bin/modelfleet" images build >&2
  echo "images ready in $((SECONDS - start))s" >&2
fi
echo "$venv"
