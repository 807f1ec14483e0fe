"""The local cluster's real node: containerd, kubelet, kube-proxy and cluster DNS as processes on this machine.

Configuration is rendered by pure functions (unit-tested); `RealNode` writes it, knows each component's
command line and health check, and undoes everything on the host when stopped: containers, mounts, network
namespaces, the bridge, iptables chains, sysctls and the kubelet's cgroups. Needs root. There is one real node
per machine (one bridge, one kube-proxy): a second cluster with a real node is refused while one runs.

Pods reach the API server through the `kubernetes` Service, so in this mode the API server listens on (and
advertises) the bridge's gateway address instead of 127.0.0.1; nothing here listens on another interface.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from modelfleet.localcluster import hostnet
from modelfleet.localcluster.binaries import cache_dir

NODE_NAME = "modelfleet-node"
NODE_LABELS = {"modelfleet.dev/node": "real"}
RUN_DIR = Path("/run/modelfleet")
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
OWNER_FILE = RUN_DIR / "owner"
CNI_NETWORK = "modelfleet"
CGROUP_ROOT = Path("/sys/fs/cgroup")
COMPONENTS = ("containerd", "coredns", "kubelet", "kube-proxy")
DNS_MANAGER = "modelfleet.dev-local-cluster"  # an EndpointSlice's managed-by must be a valid label value


def containerd_root() -> Path:
    """Kept across clusters (its content store holds the loaded images); overlayfs needs a real filesystem."""
    return cache_dir() / "node" / "containerd"


def containerd_config(pause_image: str, cni_conf_dir: Path) -> str:
    return f"""version = 2
root = "{containerd_root()}"
state = "{RUN_DIR / 'containerd'}"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # These machines lack CAP_SYS_RESOURCE: runc cannot lower a container's oom_score_adj below its parent's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """A bridge network with no masquerading: pods talk to each other and to this host, and nowhere else."""
    return {"cniVersion": "1.0.0", "name": CNI_NETWORK, "plugins": [
        {"type": "bridge", "bridge": hostnet.BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                  "ranges": [[{"subnet": hostnet.POD_CIDR, "gateway": hostnet.GATEWAY}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def kubelet_config(pki_dir: Path, resolv_conf: Path, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # This machine: cgroup v1 with the cgroupfs driver, swap allowed, no CAP_SYS_RESOURCE (oomScoreAdj 0).
        "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False, "oomScoreAdj": 0,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "address": hostnet.GATEWAY, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki_dir / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki_dir / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local", "clusterDNS": [hostnet.CLUSTER_DNS], "resolvConf": str(resolv_conf),
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        # Images cannot be pulled again (no registry): never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables", "hostnameOverride": NODE_NAME, "clusterCIDR": hostnet.POD_CIDR,
        "bindAddress": hostnet.GATEWAY,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}", "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{hostnet.GATEWAY}/32"],
        "iptables": {"localhostNodePorts": False},
        # 0: leave the host's conntrack table size and timeouts as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
    }


def corefile(kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """Cluster names only: there is no upstream resolver, so pods never use the machine's."""
    return f""".:53 {{
    bind {hostnet.GATEWAY}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} modelfleet-local
        pods insecure
    }}
    cache 30
}}
"""


def dns_objects() -> list[dict[str, Any]]:
    """The kube-dns Service (the kubelet's clusterDNS) with an EndpointSlice pointing at CoreDNS on the host,
    and the RBAC that CoreDNS's kubernetes plugin needs."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
         "spec": {"clusterIP": hostnet.CLUSTER_DNS, "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {
            "name": "kube-dns-host", "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": DNS_MANAGER}},
         "addressType": "IPv4", "endpoints": [{"addresses": [hostnet.GATEWAY], "conditions": {"ready": True}}],
         "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "modelfleet:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "modelfleet:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelfleet:coredns"},
         "subjects": [{"kind": "User", "name": "modelfleet-coredns", "apiGroup": "rbac.authorization.k8s.io"}]},
        # The API server's client certificate for `kubectl logs/exec/port-forward`, authorised by the kubelet.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "modelfleet:apiserver-kubelet-client"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
         "subjects": [{"kind": "User", "name": "kube-apiserver-kubelet-client", "apiGroup": "rbac.authorization.k8s.io"}]},
    ]


def storage_objects(volumes_dir: Path, count: int) -> list[dict[str, Any]]:
    """A default StorageClass with `count` pre-created hostPath PersistentVolumes on the real node, each
    ReadWriteMany (every pod on the node sees the same directory) and pinned to the node by node affinity, so
    a pod with a claim is scheduled where its data is."""
    objects: list[dict[str, Any]] = [{
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "modelfleet-local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate", "reclaimPolicy": "Retain"}]
    for index in range(count):
        objects.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"modelfleet-local-{index:02d}", "labels": {"modelfleet.dev/local-volume": "true"}},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "modelfleet-local",
                     "hostPath": {"path": str(volumes_dir / f"{index:02d}"), "type": "Directory"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}}})
    return objects


class RealNode:
    """The node's files live in `directory` (a subdirectory of the cluster's)."""

    def __init__(self, directory: Path, pki_dir: Path, bin_dir: Path) -> None:
        self.directory = directory
        self.pki_dir = pki_dir
        self.bin_dir = bin_dir

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def volumes_dir(self) -> Path:
        return self.directory / "volumes"

    # -- before the components start --------------------------------------------------------------
    @staticmethod
    def check_host() -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the local cluster's real node needs root (containerd, the kubelet, a bridge and "
                               "iptables rules); run as root, or use `modelfleet cluster up --no-real-node`")
        missing = [tool for tool in ("containerd", "runc", "ctr", "iptables", "ip", "buildah", "mmdebstrap")
                   if shutil.which(tool) is None]
        if missing or not Path("/usr/lib/cni/bridge").exists():
            raise RuntimeError(f"missing {', '.join(missing) or 'the CNI plugins'}: run `bash hack/install-deps.sh`")

    @staticmethod
    def owner() -> Path | None:
        """The directory of the local cluster that claimed the real node, if any."""
        return Path(OWNER_FILE.read_text().strip()) if OWNER_FILE.exists() else None

    def claim(self, cluster_dir: Path) -> None:
        """Refuse a second real node on this machine: one bridge, one kube-proxy."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        owner = self.owner()
        if owner is not None and owner != cluster_dir and (owner / "state.json").exists():
            raise RuntimeError(f"another local cluster's real node is running ({owner}); stop it first with "
                               f"`modelfleet cluster down --dir {owner}`")
        OWNER_FILE.write_text(str(cluster_dir))

    def write_configs(self, pause_image: str, ports: dict[str, int]) -> None:
        d = self.directory
        for sub in ("cni", "cni-ipam", "kubelet", "volumes"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "containerd.toml").write_text(containerd_config(pause_image, d / "cni"))
        (d / "cni" / "10-modelfleet.conflist").write_text(json.dumps(cni_config(d / "cni-ipam"), indent=2))
        (d / "resolv.conf").write_text(f"nameserver {hostnet.CLUSTER_DNS}\n")
        (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(self.pki_dir, d / "resolv.conf", ports["kubelet"])))
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(kube_proxy_config(
            d.parent / "kube-proxy.kubeconfig", ports["kube-proxy"], ports["kube-proxy-metrics"])))
        (d / "Corefile").write_text(corefile(d.parent / "coredns.kubeconfig", ports["coredns"], ports["coredns-ready"]))

    def prepare_volumes(self, count: int) -> list[dict[str, Any]]:
        for index in range(count):
            path = self.volumes_dir / f"{index:02d}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o1777)  # any pod's uid may write, as on a shared file system; sticky like /tmp
        return storage_objects(self.volumes_dir, count)

    # -- components ----------------------------------------------------------------------------------
    def command(self, name: str) -> list[str]:
        d, bins = self.directory, self.bin_dir
        if name == "containerd":
            return ["containerd", f"--config={d / 'containerd.toml'}", "--log-level=warn"]
        if name == "coredns":
            return [str(bins / "coredns"), "-conf", str(d / "Corefile")]
        if name == "kubelet":
            return [str(bins / "kubelet"), f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={d.parent / 'kubelet.kubeconfig'}",
                    f"--root-dir={self.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={hostnet.GATEWAY}",
                    "--node-labels=" + ",".join(f"{k}={v}" for k, v in NODE_LABELS.items()), "--v=1"]
        if name == "kube-proxy":
            return [str(bins / "kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"]
        raise ValueError(name)

    # -- teardown ------------------------------------------------------------------------------------
    def remove_containers(self) -> None:
        """Kill and delete every container the node's containerd runs (its images stay)."""
        if not CONTAINERD_SOCKET.exists():
            return
        ctr = ["ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", "k8s.io", "--timeout", "10s"]
        tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
        for task in tasks:
            subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", task], capture_output=True)
        deadline = time.monotonic() + 15
        for task in tasks:
            while subprocess.run([*ctr, "tasks", "delete", task], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split()
        if containers:
            subprocess.run([*ctr, "containers", "delete", *containers], capture_output=True)

    def kill_shims(self) -> None:
        """containerd's shims outlive it by design; ours are the ones started with our socket."""
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(CONTAINERD_SOCKET).encode() in cmdline:
                    try:
                        os.kill(int(proc.name), 9)
                    except ProcessLookupError:
                        pass

    def unmount_all(self) -> None:
        """Unmount (deepest first) everything under the kubelet's root, containerd's state and the pod netns."""
        roots = (str(self.directory), str(RUN_DIR), str(containerd_root()))
        for _ in range(3):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            ours = sorted({m for m in mounts if m.startswith(roots)}, key=len, reverse=True)
            if not ours:
                return
            for mount in ours:
                subprocess.run(["umount", "-l", mount], capture_output=True)

    @staticmethod
    def remove_cgroups() -> None:
        """The kubelet's kubepods hierarchy (cgroupfs driver), leaves first, in every cgroup v1 controller."""
        for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.exists() else []:
            top = controller / "kubepods"
            if not top.is_dir():
                continue
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(path)
            _rmdir(top)

    def cleanup(self, saved_sysctls: dict[str, str]) -> None:
        self.kill_shims()
        self.unmount_all()
        hostnet.teardown(saved_sysctls)
        self.remove_cgroups()
        shutil.rmtree(RUN_DIR / "containerd", ignore_errors=True)
        shutil.rmtree(self.directory / "cni-ipam", ignore_errors=True)
        shutil.rmtree(self.kubelet_root, ignore_errors=True)
        if self.owner() == self.directory.parent:
            OWNER_FILE.unlink()
        CONTAINERD_SOCKET.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        found = [f"mount {m}" for m in mounts if m.startswith((str(self.directory), str(RUN_DIR), str(containerd_root())))]
        found += [f"cgroup {c / 'kubepods'}" for c in (CGROUP_ROOT.iterdir() if CGROUP_ROOT.exists() else [])
                  if (c / "kubepods").is_dir()]
        return found + hostnet.leftovers()


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)  # a process in it is still exiting
