"""The local cluster: start order, health checks, kubeconfig, and a clean stop.

etcd -> kube-apiserver (TLS, client-certificate auth, Node + RBAC authorization, service-account keys,
default admission plugins) -> kube-controller-manager and kube-scheduler -> kwok (fake GPU and CPU nodes)
-> the real node (containerd, CoreDNS, kubelet, kube-proxy; see realnode.py), with the images it runs
-> optionally Kueue (see kueue.py).
Without the real node every process listens on 127.0.0.1; with it, the API server listens on the pod
bridge's gateway address so that pods reach it, and nothing listens on another interface.

With the real node, kwok's nodes are tainted so that pods run on the real node unless they ask for a fake
one: GPU nodes with `nvidia.com/gpu=present:NoSchedule` (tolerated automatically by pods that request GPUs,
through the ExtendedResourceToleration admission plugin, as on GKE), the CPU node with
`kwok.x-k8s.io/node=fake:NoSchedule`.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from modelfleet.localcluster import audit, hostnet, processes
from modelfleet.localcluster.binaries import KWOK_CONFIG, cache_dir, ensure_binaries
from modelfleet.localcluster.kueue import PORTS as KUEUE_PORTS
from modelfleet.localcluster.kueue import Kueue
from modelfleet.localcluster.nodes import fake_nodes
from modelfleet.localcluster.pki import FRONT_PROXY_CLIENT, Pki, create_pki
from modelfleet.localcluster.realnode import CONTAINERD_SOCKET, RealNode, dns_objects

SERVICE_CIDR = hostnet.SERVICE_CIDR
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REAL_NODE = ("containerd", "coredns", "kubelet", "kube-proxy")
LOCAL_VOLUMES = 24
HPA_SYNC_PERIOD = "5s"  # Kubernetes' default is 15 s; shorter, so that autoscaling tests see decisions sooner
PORTS = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
         "kubelet", "kube-proxy", "kube-proxy-metrics", "coredns", "coredns-ready", *KUEUE_PORTS)


@dataclass
class ClusterState:
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    real_node: bool = False
    images: dict[str, str] = field(default_factory=dict)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    kueue: bool = False


def default_directory() -> Path:
    return cache_dir() / "cluster"


class LocalCluster:
    """A cluster whose files (certificates, etcd data, logs, kubeconfig, the real node's state) live in
    `directory`. `real_node=False` gives the control plane with kwok's fake nodes only (no root needed);
    `kueue=True` adds Kueue, built from its Go module (docs/kueue.md)."""

    def __init__(self, directory: Path | None = None, bin_dir: Path | None = None, real_node: bool = True,
                 say: Callable[[str], None] = lambda line: None, kueue: bool = False) -> None:
        self.directory = Path(directory or default_directory()).resolve()
        self._bin_dir = bin_dir
        self.real_node = real_node
        self.kueue = kueue
        self.say = say
        self.pki = Pki(self.directory / "pki")

    @property
    def components(self) -> tuple[str, ...]:
        return CONTROL_PLANE + (REAL_NODE if self.real_node else ()) + (("kueue",) if self.kueue else ())

    @property
    def api_host(self) -> str:
        return hostnet.GATEWAY if self.real_node else "127.0.0.1"

    @property
    def node(self) -> RealNode:
        return RealNode(self.directory / "node", self.pki.directory, self.bin_dir)

    @property
    def images(self) -> dict[str, str]:
        """The images loaded into the real node: name (pause, operator, runtime) -> reference."""
        return self.load_state().images

    # -- paths and clients -------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries(("kueue",) if self.kueue else ())
        return self._bin_dir

    @property
    def kubeconfig(self) -> str:
        return str(self.directory / "kubeconfig")

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: ServiceAccounts' requests at Metadata level (see audit.py)."""
        return self.directory / "logs" / "audit.log"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def load_state(self) -> ClusterState:
        if not self.state_file.exists():
            return ClusterState()
        return ClusterState(**json.loads(self.state_file.read_text()))

    def _save_state(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> None:
        """Start every component and wait until every node is Ready. Idempotent while running.
        With the real node, builds (once; cached) and loads the images it runs first."""
        if self.running():
            return
        self.down()
        self.bin_dir  # noqa: B018 (builds any missing binary before anything starts)
        self.directory.mkdir(parents=True, exist_ok=True)
        state = ClusterState(ports={name: processes.free_port() for name in PORTS}, real_node=self.real_node,
                             kueue=self.kueue)
        if self.real_node:
            self._prepare_real_node(state)
        create_pki(self.directory / "pki")
        audit.write_policy(self.directory / "audit-policy.json")
        self._write_kubeconfigs(state.ports["kube-apiserver"])
        deadline = time.monotonic() + timeout
        try:
            if self.real_node:
                state.saved_sysctls = hostnet.setup(state.ports["kube-apiserver"])
                self._save_state(state)
            for name in CONTROL_PLANE:
                self._start(name, state, deadline)
            self._create_nodes()
            if self.real_node:
                deadline = self._start_real_node(state, timeout)
            self._wait("nodes Ready", self._nodes_ready, deadline)
            self._wait("default service account", self._default_service_account, deadline)
            if self.kueue:
                self.kueue_manager(state.ports).install(self.kubectl)
                self._start("kueue", state, deadline)
        except BaseException:
            self.down()
            raise

    def _start(self, name: str, state: ClusterState, deadline: float) -> None:
        command = self._command(name, self.bin_dir, state.ports)
        if name == "kube-apiserver":
            command += audit.apiserver_flags(self.directory / "audit-policy.json", self.audit_log)
        proc = processes.start(command, self.directory / "logs" / f"{name}.log")
        state.pids[name] = proc.pid
        self._save_state(state)
        self._wait(name, lambda: self._healthy(name, state), deadline, process=proc)

    def _prepare_real_node(self, state: ClusterState) -> None:
        from modelfleet.images import ImageBuilder

        RealNode.check_host()
        self._take_over_from_a_dead_owner()
        self.node.claim(self.directory)
        state.images = ImageBuilder(say=self.say).build_all()
        self.node.write_configs(state.images["pause"], state.ports)

    def _take_over_from_a_dead_owner(self) -> None:
        """A real node whose processes all died (a killed session, a reboot) leaves its claim, bridge, rules and
        mounts behind; bring it down so this cluster can start. A live one is still refused by `claim`."""
        owner = RealNode.owner()
        if owner is None or owner == self.directory:
            return
        other = LocalCluster(owner, bin_dir=self._bin_dir, real_node=True, say=self.say)
        if other.load_state().real_node and not other.any_process_alive():
            self.say(f"the real node of {owner} is not running any more: cleaning up after it")
            other.down()

    def any_process_alive(self) -> bool:
        """Whether any component this cluster's state records still runs."""
        return any(processes.running(pid, name) for name, pid in self.load_state().pids.items())

    def _start_real_node(self, state: ClusterState, timeout: float) -> float:
        """Start the node's components; returns the deadline for what follows (loading images can take
        minutes the first time, and does not count against `timeout`)."""
        from modelfleet.images import ImageBuilder

        node = self.node
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            *dns_objects(), *node.prepare_volumes(LOCAL_VOLUMES)]}))
        self._start("containerd", state, time.monotonic() + timeout)
        builder = ImageBuilder(say=self.say)
        builder.load(list(state.images.values()), CONTAINERD_SOCKET)
        builder.prune_containerd(CONTAINERD_SOCKET)
        deadline = time.monotonic() + timeout
        for name in ("coredns", "kubelet", "kube-proxy"):
            self._start(name, state, deadline)
        return deadline

    def down(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) in reverse start order, undo what the real node did
        to the host, and forget the state."""
        state = self.load_state()
        for name in reversed(CONTROL_PLANE + REAL_NODE + ("kueue",)):
            if name == "containerd" and state.real_node:
                self.node.remove_containers()
            if name in state.pids:
                processes.stop(state.pids[name], expected=name)
        if state.real_node:
            self.node.cleanup(state.saved_sysctls)
        if self.state_file.exists():
            self.state_file.unlink()
        shutil.rmtree(self.directory / "etcd", ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What a stopped cluster left on the host (processes excepted): empty after a clean `down`."""
        return self.node.leftovers() if self.real_node else []

    def running(self) -> bool:
        state = self.load_state()
        return bool(state.pids) and state.real_node == self.real_node and all(
            self._healthy(n, state) for n in self.components)

    def status(self) -> dict[str, bool]:
        state = self.load_state()
        return {name: bool(state.pids) and self._healthy(name, state) for name in self.components}

    def kueue_manager(self, ports: dict[str, int] | None = None) -> Kueue:
        ports = ports or self.load_state().ports
        return Kueue(self.directory / "kueue", self.bin_dir, self.kubeconfig, ports["kueue"], ports["kueue-webhook"])

    # -- internals ------------------------------------------------------------------------------
    def _command(self, name: str, bins: Path, ports: dict[str, int]) -> list[str]:
        pki, d = self.pki, self.directory
        if name == "etcd":
            peer = f"http://127.0.0.1:{ports['etcd-peer']}"
            client = f"http://127.0.0.1:{ports['etcd']}"
            return [str(bins / "etcd"), "--name=local", f"--data-dir={d / 'etcd'}",
                    f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=local={peer}", "--unsafe-no-fsync", "--log-level=warn",
                    "--listen-metrics-urls="]
        if name == "kube-apiserver":
            kubelet_client = pki.client("apiserver-kubelet-client")
            return [str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                    f"--bind-address={self.api_host}", f"--advertise-address={self.api_host}",
                    f"--secure-port={ports['kube-apiserver']}",
                    f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}", "--authorization-mode=Node,RBAC",
                    f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
                    "--enable-admission-plugins=NodeRestriction,ExtendedResourceToleration", "--profiling=false",
                    f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
                    f"--kubelet-certificate-authority={pki.ca_cert}",
                    # never resolve the node's name through this machine's resolver
                    "--kubelet-preferred-address-types=InternalIP",
                    f"--cert-dir={d / 'pki' / 'apiserver'}", *self._aggregation_flags()]
        if name == "kube-controller-manager":
            kc = str(d / "controller-manager.kubeconfig")
            return [str(bins / "kube-controller-manager"), f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1", f"--secure-port={ports['kube-controller-manager']}",
                    "--leader-elect=false", "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
                    "--concurrent-gc-syncs=10", "--profiling=false", f"--cert-dir={d / 'pki' / 'kcm'}",
                    f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD}"]
        if name == "kube-scheduler":
            kc = str(d / "scheduler.kubeconfig")
            return [str(bins / "kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
                    f"--secure-port={ports['kube-scheduler']}", "--leader-elect=false", "--profiling=false",
                    f"--cert-dir={d / 'pki' / 'scheduler'}"]
        if name == "kwok":
            return [str(bins / "kwok"), f"--kubeconfig={d / 'kwok.kubeconfig'}", f"--config={KWOK_CONFIG}",
                    f"--server-address=127.0.0.1:{ports['kwok']}", "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"]
        if name in REAL_NODE:
            return self.node.command(name)
        if name == "kueue":
            return self.kueue_manager(ports).command()
        raise ValueError(name)

    def _aggregation_flags(self) -> list[str]:
        """The API server as front proxy for aggregated APIs (the metrics adapter, metricsadapter.py): it calls
        them with the front proxy's client certificate and names the user in request headers; it connects to
        an APIService's endpoint address directly (the adapter runs on the host, not behind kube-proxy)."""
        pki = self.pki
        cert, key = pki.client(FRONT_PROXY_CLIENT)
        return [f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}", "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={cert}", f"--proxy-client-key-file={key}", "--enable-aggregator-routing=true"]

    def _write_kubeconfigs(self, api_port: int) -> None:
        server = f"https://{self.api_host}:{api_port}"
        clients = ["controller-manager", "scheduler", "kwok", "metrics-adapter"] + (
            ["kubelet", "kube-proxy", "coredns"] if self.real_node else [])
        for client, path in (("admin", self.kubeconfig), *((c, self.directory / f"{c}.kubeconfig") for c in clients)):
            cert, key = self.pki.client(client)
            config = {
                "apiVersion": "v1", "kind": "Config", "current-context": "modelfleet-local",
                "clusters": [{"name": "modelfleet-local", "cluster": {"server": server, "certificate-authority": str(self.pki.ca_cert)}}],
                "users": [{"name": client, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
                "contexts": [{"name": "modelfleet-local", "context": {"cluster": "modelfleet-local", "user": client}}],
            }
            Path(path).write_text(json.dumps(config, indent=2))
            os.chmod(path, 0o600)

    def _healthy(self, name: str, state: ClusterState) -> bool:
        pid = state.pids.get(name)
        if pid is None or not processes.alive(pid):
            return False
        if name == "containerd":
            return subprocess.run(["ctr", "--address", str(CONTAINERD_SOCKET), "version"],
                                  capture_output=True).returncode == 0
        if name == "kueue":
            return self.kueue_manager(state.ports).healthy()
        port = state.ports[name]
        if name == "etcd":
            return self._get(f"http://127.0.0.1:{port}/health", None) == 200
        if name == "kube-apiserver":
            return self._get(f"https://{self.api_host}:{port}/readyz", self._admin_tls()) == 200
        if name in ("kwok", "kubelet", "kube-proxy"):
            return self._get(f"http://127.0.0.1:{port}/healthz", None) == 200
        if name == "coredns":
            return self._get(f"http://127.0.0.1:{state.ports['coredns-ready']}/ready", None) == 200
        return self._get(f"https://127.0.0.1:{port}/healthz", ssl._create_unverified_context()) == 200

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(*map(str, self.pki.client("admin")))
        return context

    @staticmethod
    def _get(url: str, context: ssl.SSLContext | None) -> int:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return 0

    def _wait(self, what: str, check: Callable[[], bool], deadline: float,
              process: subprocess.Popen[bytes] | None = None) -> None:
        def still_running() -> None:
            if process is not None and process.poll() is not None:
                log = (self.directory / "logs" / f"{what}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"local cluster: {what} exited with {process.returncode}:\n" + "\n".join(log))

        processes.poll_until(check, deadline, f"local cluster: {what} not ready in time; logs in {self.directory / 'logs'}",
                             still_running)

    def _create_nodes(self) -> None:
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": fake_nodes(tainted=self.real_node)})
        self.kubectl("apply", "-f", "-", input=manifest)

    def _nodes_ready(self) -> bool:
        result = self.kubectl("get", "nodes", "-o", "json", check=False)
        if result.returncode != 0:
            return False
        items = json.loads(result.stdout)["items"]
        return len(items) == len(fake_nodes()) + self.real_node and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            for n in items)

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
