"""The local control plane: start order, health checks, kubeconfig, and a clean stop.

etcd -> kube-apiserver (TLS, client-certificate auth, RBAC, service-account keys, default admission
plugins) -> kube-controller-manager and kube-scheduler -> kwok (fake nodes) -> the nodes themselves.
Every process listens on 127.0.0.1 only, on free ports chosen at start.
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

from modelfleet.localcluster import processes
from modelfleet.localcluster.binaries import KWOK_CONFIG, cache_dir, ensure_binaries
from modelfleet.localcluster.nodes import fake_nodes
from modelfleet.localcluster.pki import Pki, create_pki

SERVICE_CIDR = "10.96.0.0/16"
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


@dataclass
class ClusterState:
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


def default_directory() -> Path:
    return cache_dir() / "cluster"


class LocalCluster:
    """A control plane whose files (certificates, etcd data, logs, kubeconfig) live in `directory`."""

    def __init__(self, directory: Path | None = None, bin_dir: Path | None = None) -> None:
        self.directory = Path(directory or default_directory()).resolve()
        self._bin_dir = bin_dir
        self.pki = Pki(self.directory / "pki")

    # -- paths and clients -------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def kubeconfig(self) -> str:
        return str(self.directory / "kubeconfig")

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
        from kubernetes import client, config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def load_state(self) -> ClusterState:
        if not self.state_file.exists():
            return ClusterState()
        return ClusterState(**json.loads(self.state_file.read_text()))

    def _save_state(self, state: ClusterState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> None:
        """Start every component and wait until the fake nodes are Ready. Idempotent while running."""
        if self.running():
            return
        self.down()
        bins = self.bin_dir
        self.directory.mkdir(parents=True, exist_ok=True)
        create_pki(self.directory / "pki")
        state = ClusterState(ports={name: processes.free_port() for name in
                                    ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager",
                                     "kube-scheduler", "kwok")})
        self._write_kubeconfigs(state.ports["kube-apiserver"])
        deadline = time.monotonic() + timeout
        try:
            for name in START_ORDER:
                proc = processes.start(self._command(name, bins, state.ports), self.directory / "logs" / f"{name}.log")
                state.pids[name] = proc.pid
                self._save_state(state)
                self._wait(name, lambda n=name: self._healthy(n, state), deadline, process=proc)
            self._create_nodes()
            self._wait("nodes Ready", self._nodes_ready, deadline)
            self._wait("default service account", self._default_service_account, deadline)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) in reverse start order and forget the state."""
        state = self.load_state()
        for name in reversed(START_ORDER):
            if name in state.pids:
                processes.stop(state.pids[name], expected=name)
        if self.state_file.exists():
            self.state_file.unlink()
        shutil.rmtree(self.directory / "etcd", ignore_errors=True)

    def running(self) -> bool:
        state = self.load_state()
        return bool(state.pids) and all(self._healthy(n, state) for n in START_ORDER)

    def status(self) -> dict[str, bool]:
        state = self.load_state()
        return {name: bool(state.pids) and self._healthy(name, state) for name in START_ORDER}

    # -- internals ------------------------------------------------------------------------------
    def _command(self, name: str, bins: Path, ports: dict[str, int]) -> list[str]:
        pki, d = self.pki, self.directory
        api = f"https://127.0.0.1:{ports['kube-apiserver']}"
        if name == "etcd":
            peer = f"http://127.0.0.1:{ports['etcd-peer']}"
            client = f"http://127.0.0.1:{ports['etcd']}"
            return [str(bins / "etcd"), "--name=local", f"--data-dir={d / 'etcd'}",
                    f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=local={peer}", "--unsafe-no-fsync", "--log-level=warn",
                    "--listen-metrics-urls="]
        if name == "kube-apiserver":
            return [str(bins / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={ports['kube-apiserver']}",
                    f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
                    f"--client-ca-file={pki.ca_cert}", "--authorization-mode=RBAC",
                    f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
                    "--enable-admission-plugins=NodeRestriction", "--profiling=false",
                    f"--cert-dir={d / 'pki' / 'apiserver'}"]
        if name == "kube-controller-manager":
            kc = str(d / "controller-manager.kubeconfig")
            return [str(bins / "kube-controller-manager"), f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1", f"--secure-port={ports['kube-controller-manager']}",
                    "--leader-elect=false", "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
                    "--concurrent-gc-syncs=10", "--profiling=false", f"--cert-dir={d / 'pki' / 'kcm'}"]
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
        raise ValueError(name)

    def _write_kubeconfigs(self, api_port: int) -> None:
        server = f"https://127.0.0.1:{api_port}"
        for client, path in (("admin", self.kubeconfig), ("controller-manager", self.directory / "controller-manager.kubeconfig"),
                             ("scheduler", self.directory / "scheduler.kubeconfig"), ("kwok", self.directory / "kwok.kubeconfig")):
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
        port = state.ports[name]
        if name == "etcd":
            return self._get(f"http://127.0.0.1:{port}/health", None) == 200
        if name == "kube-apiserver":
            return self._get(f"https://127.0.0.1:{port}/readyz", self._admin_tls()) == 200
        if name == "kwok":
            return self._get(f"http://127.0.0.1:{port}/healthz", None) == 200
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
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": fake_nodes()})
        self.kubectl("apply", "-f", "-", input=manifest)

    def _nodes_ready(self) -> bool:
        result = self.kubectl("get", "nodes", "-o", "json", check=False)
        if result.returncode != 0:
            return False
        items = json.loads(result.stdout)["items"]
        return len(items) == len(fake_nodes()) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
            for n in items)

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
