#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules at the versions pinned in hack/go/*/go.mod,
# into ${MODELFLEET_CACHE:-~/.cache/modelfleet}/bin, keyed by version. Builds only what is missing.
# usage: build-binaries.sh [kueue]   (optional components are built only when named)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}
bin=$cache/bin
mkdir -p "$bin"
exec 9>"$bin/.build.lock"
flock 9  # concurrent callers wait for one build instead of racing it
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

# Versions: the single source of truth is each wrapper module's go.mod.
mod_version() { awk -v m="$2" '$1=="require" {$1=""; $0=$0} $1==m && $2 ~ /^v/ {print $2; exit}' "$here/go/$1/go.mod"; }
K8S_VERSION=$(mod_version kubernetes k8s.io/kubernetes)
ETCD_VERSION=$(mod_version etcd go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(mod_version kwok sigs.k8s.io/kwok)
HELM_VERSION=$(mod_version helm helm.sh/helm/v3)
COREDNS_VERSION=$(mod_version coredns github.com/coredns/coredns)
ADAPTER_VERSION=$(mod_version prometheus-adapter sigs.k8s.io/prometheus-adapter)
KUEUE_VERSION=$(mod_version kueue sigs.k8s.io/kueue)
k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)

build() { # build <module dir> <output name> <package> [ldflags]
  local out=$bin/$2
  [ -x "$out" ] && return 0
  echo "building $2 ($3)" >&2
  local start=$SECONDS
  (cd "$here/go/$1" && go build -trimpath -ldflags "-s -w ${4:-}" -o "$out.tmp" "$3")
  mv "$out.tmp" "$out"
  echo "built $2 in $((SECONDS - start))s" >&2
}

k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$k8s_minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"

build etcd "etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  build kubernetes "$c-$K8S_VERSION" "k8s.io/kubernetes/cmd/$c" "$k8s_ldflags"
done
build kwok "kwok-$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$K8S_VERSION"
build helm "helm-$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
   -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"

# The real node's cluster DNS, and the pod sandbox ("pause") program its image is built from (static: the image
# holds nothing else).
build coredns "coredns-$COREDNS_VERSION" github.com/coredns/coredns \
  "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"
# The custom metrics API for HorizontalPodAutoscalers, from Prometheus (modelfleet/localcluster/metricsadapter.py).
build prometheus-adapter "prometheus-adapter-$ADAPTER_VERSION" sigs.k8s.io/prometheus-adapter/cmd/adapter
CGO_ENABLED=0 build pause "pause-$(sha256sum "$here/go/pause/main.go" | cut -c1-12)" .

# Kueue (optional): the manager, and its CRDs and webhook configurations from the same module version's source.
links=()
if [[ " $* " == *" kueue "* ]]; then
  build kueue "kueue-$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  config=$bin/kueue-config-$KUEUE_VERSION
  if [ ! -d "$config" ]; then
    src=$(cd "$here/go/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
    rm -rf "$config.tmp" && mkdir -p "$config.tmp"
    cp -r "$src/config/components/crd" "$src/config/components/webhook" "$config.tmp/"
    chmod -R u+w "$config.tmp"  # the module cache is read-only
    mv "$config.tmp" "$config"
  fi
  links+=("kueue kueue-$KUEUE_VERSION" "kueue-config kueue-config-$KUEUE_VERSION")
fi

# Stable names for callers, pointing at the pinned versions.
for pair in "etcd etcd-$ETCD_VERSION" "kube-apiserver kube-apiserver-$K8S_VERSION" \
  "kube-controller-manager kube-controller-manager-$K8S_VERSION" "kube-scheduler kube-scheduler-$K8S_VERSION" \
  "kubectl kubectl-$K8S_VERSION" "kubelet kubelet-$K8S_VERSION" "kube-proxy kube-proxy-$K8S_VERSION" \
  "kwok kwok-$KWOK_VERSION" "helm helm-$HELM_VERSION" "coredns coredns-$COREDNS_VERSION" \
  "prometheus-adapter prometheus-adapter-$ADAPTER_VERSION" \
  "pause pause-$(sha256sum "$here/go/pause/main.go" | cut -c1-12)" "${links[@]}"; do
  set -- $pair
  ln -sfn "$2" "$bin/$1"
done
echo "$bin"
