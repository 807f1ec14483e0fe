"""Runs modelfleet's pods as local processes, standing in for the kubelet on the local cluster.

kwok fakes nodes: their pods never really run. For the local demo (and its end-to-end test) this
runner watches modelfleet's pods that kwok reports Running and starts each one's container command
as a host process, the way a kubelet would, then reports the process's exit code back through the
`fake.modelfleet.dev/exit-code` annotation, which kwok's pod-exit stage turns into the pod's final
phase. What a container would see is mapped onto the host:

- env: literal values, downward-API fields, ConfigMap and Secret keys;
- volumes: ConfigMap volumes are written to a per-pod directory, hostPath volumes are the host path,
  emptyDir volumes are per-pod directories; container paths in env values and in ConfigMap files
  are rewritten to those host paths;
- the pod's ServiceAccount: a short-lived token from the TokenRequest API in a kubeconfig, so the
  process has exactly the pod's permissions;
- networking: names of pods in the same namespace resolve to 127.0.0.1; the ports a pod declares
  are replaced by free local ports (see `ports`), with rendezvous ports shared by the pods of a job.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kubernetes import client, watch

from modelfleet.localcluster.processes import free_port

log = logging.getLogger("modelfleet.podrunner")

EXIT_CODE_ANNOTATION = "fake.modelfleet.dev/exit-code"
MESSAGE_ANNOTATION = "fake.modelfleet.dev/message"
HOST_ENV_NAMES = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
PORT_ENV_NAMES = ("MASTER_PORT", "PET_MASTER_PORT", "MODELFLEET_PORT", "MODELFLEET_METRICS_PORT")


@dataclass
class RunningPod:
    name: str
    uid: str
    log_path: Path
    command: list[str]
    env: dict[str, str]
    restart_always: bool
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] = field(init=False)
    reported: bool = False
    restarts: int = 0
    restart_at: float | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.log_path.parent, start_new_session=True)


class PodRunner:
    """Watches pods labelled `app.kubernetes.io/managed-by=modelfleet` in `namespace` and runs them."""

    def __init__(self, api: client.ApiClient, namespace: str, work_dir: Path, server: str, ca_file: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.work_dir = work_dir
        self.server = server
        self.ca_file = ca_file
        self.pods: dict[str, RunningPod] = {}
        self._group_ports: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="podrunner", daemon=True)

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for running in self.pods.values():
                if running.process.poll() is None:
                    running.process.send_signal(signal.SIGTERM)
            for running in self.pods.values():
                try:
                    running.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    running.process.kill()

    def port(self, pod_name: str, env_name: str) -> int | None:
        """The local port that replaced `env_name` (e.g. MODELFLEET_PORT) for a running pod."""
        with self._lock:
            running = [r for r in self.pods.values() if r.name == pod_name and r.process.poll() is None]
            return running[-1].ports.get(env_name) if running else None

    # -- loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                              label_selector="app.kubernetes.io/managed-by=modelfleet", timeout_seconds=5)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._handle(event["type"], event["object"])
                self._reap()
            except Exception:  # the watch may break while the cluster is stopping; retry until told to stop
                log.exception("pod runner watch failed; retrying")
                self._stop.wait(1)

    def _handle(self, kind: str, pod: client.V1Pod) -> None:
        with self._lock:
            running = self.pods.get(pod.metadata.uid)
        if kind == "DELETED" or pod.metadata.deletion_timestamp:
            if running:
                running.reported = True  # the pod is going away: neither restart nor report it
                if running.process.poll() is None:
                    running.process.send_signal(signal.SIGTERM)
            return
        if running is None and pod.status.phase == "Running":
            self._launch(pod)
        self._reap()

    def _reap(self) -> None:
        """Restart ended containers of restartPolicy Always pods (with the kubelet's back-off: 10 s doubling
        to 5 min), and report the others' exit codes."""
        with self._lock:
            finished = [r for r in self.pods.values() if not r.reported and r.process.poll() is not None]
        for running in finished:
            if running.restart_always:
                if running.restart_at is None:
                    running.restart_at = time.monotonic() + min(10 * 2 ** running.restarts, 300)
                elif time.monotonic() >= running.restart_at and not self._stop.is_set():
                    running.restarts += 1
                    running.restart_at = None
                    running.spawn()
                continue
            code = running.process.returncode
            code = 128 - code if code < 0 else code  # killed by a signal: report as a shell would
            tail = running.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            try:
                self.core.patch_namespaced_pod(running.name, self.namespace, {"metadata": {"uid": running.uid, "annotations": {
                    EXIT_CODE_ANNOTATION: str(code), MESSAGE_ANNOTATION: "\n".join(tail)[-1000:]}}})
            except client.ApiException as err:
                if err.status not in (404, 409, 422):  # gone, or replaced by a new pod of the same name
                    raise
            running.reported = True

    # -- launching ------------------------------------------------------------------------------
    def _launch(self, pod: client.V1Pod) -> None:
        name = pod.metadata.name
        sandbox = self.work_dir / name
        shutil.rmtree(sandbox, ignore_errors=True)
        sandbox.mkdir(parents=True)
        container = pod.spec.containers[0]
        mounts = self._mount_volumes(pod, container, sandbox)
        env = self._environment(pod, container, mounts, sandbox)
        ports = {k: int(env[k]) for k in PORT_ENV_NAMES if k in env}
        command = host_command([*(container.command or []), *(container.args or [])], mounts)
        running = RunningPod(name, pod.metadata.uid, sandbox / "container.log", command, env,
                             restart_always=pod.spec.restart_policy in (None, "Always"), ports=ports)
        running.spawn()
        log.info("started pod %s: %s (log %s)", name, " ".join(command), running.log_path)
        with self._lock:
            self.pods[pod.metadata.uid] = running

    def _mount_volumes(self, pod: client.V1Pod, container: client.V1Container, sandbox: Path) -> dict[str, str]:
        """Materialise the container's volume mounts; returns {container path: host path}."""
        volumes = {v.name: v for v in pod.spec.volumes or []}
        mounts: dict[str, str] = {}
        for mount in container.volume_mounts or []:
            volume = volumes.get(mount.name)
            if volume is None or mount.mount_path.startswith("/var/run/secrets/kubernetes.io"):
                continue
            if volume.host_path:
                host = volume.host_path.path
            elif volume.config_map:
                host = str(sandbox / "volumes" / mount.name)
                data = self.core.read_namespaced_config_map(volume.config_map.name, self.namespace).data or {}
                Path(host).mkdir(parents=True, exist_ok=True)
                for key, value in data.items():
                    (Path(host) / key).write_text(value)
            elif volume.empty_dir is not None:
                host = str(sandbox / "volumes" / mount.name)
                Path(host).mkdir(parents=True, exist_ok=True)
            else:
                raise RuntimeError(f"pod {pod.metadata.name}: volume {mount.name} has a type the local pod runner "
                                   "cannot provide (only hostPath, configMap and emptyDir)")
            if mount.sub_path:
                host = os.path.join(host, mount.sub_path)
            mounts[mount.mount_path] = host
        for host in mounts.values():  # ConfigMap files may name other mounts' container paths
            if host.startswith(str(sandbox / "volumes")) and Path(host).is_dir():
                for file in Path(host).iterdir():
                    file.write_text(_rewrite_paths(file.read_text(), mounts))
        return mounts

    def _environment(self, pod: client.V1Pod, container: client.V1Container, mounts: dict[str, str],
                     sandbox: Path) -> dict[str, str]:
        job = (pod.metadata.labels or {}).get("modelfleet.dev/trainingjob") or pod.metadata.name
        env = {var.name: self._env_value(pod, var) for var in container.env or []}
        for key in PORT_ENV_NAMES:
            if key in env:
                shared = key in ("MASTER_PORT", "PET_MASTER_PORT")
                group = (job, "rendezvous") if shared else (pod.metadata.name, key)
                env[key] = str(self._group_ports.setdefault(group, free_port()))
        peers = re.compile(rf"^[a-z0-9-]+(\.[a-z0-9-]+)?(\.{re.escape(self.namespace)}(\.svc(\.cluster\.local)?)?)?$")
        for key in ("MASTER_ADDR", "PET_MASTER_ADDR"):
            if key in env and peers.match(env[key]):
                env[key] = "127.0.0.1"
        env = host_environment(env, mounts, os.environ)
        env["KUBECONFIG"] = self._service_account_kubeconfig(pod, sandbox)
        env["MODELFLEET_NAMESPACE"] = self.namespace
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _env_value(self, pod: client.V1Pod, var: client.V1EnvVar) -> str:
        if var.value_from is None:
            return var.value or ""
        source = var.value_from
        if source.field_ref:
            path = source.field_ref.field_path
            fields = {"metadata.name": pod.metadata.name, "metadata.namespace": self.namespace,
                      "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", "spec.nodeName": pod.spec.node_name,
                      "spec.serviceAccountName": pod.spec.service_account_name}
            if path.startswith("metadata.labels['"):
                return (pod.metadata.labels or {}).get(path[len("metadata.labels['"):-2], "")
            if path.startswith("metadata.annotations['"):
                return (pod.metadata.annotations or {}).get(path[len("metadata.annotations['"):-2], "")
            return fields.get(path) or ""
        if source.config_map_key_ref:
            ref = source.config_map_key_ref
            return (self.core.read_namespaced_config_map(ref.name, self.namespace).data or {}).get(ref.key, "")
        if source.secret_key_ref:
            ref = source.secret_key_ref
            raw = (self.core.read_namespaced_secret(ref.name, self.namespace).data or {}).get(ref.key, "")
            return base64.b64decode(raw).decode()
        if source.resource_field_ref:
            return "1"
        return ""

    def _service_account_kubeconfig(self, pod: client.V1Pod, sandbox: Path) -> str:
        account = pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc.cluster.local"], expiration_seconds=3600))
        token = self.core.create_namespaced_service_account_token(account, self.namespace, request).status.token
        path = sandbox / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority": self.ca_file}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": account, "namespace": self.namespace}}],
        }))
        path.chmod(0o600)
        return str(path)


def host_command(command: list[str], mounts: dict[str, str]) -> list[str]:
    """The container's command with container paths mapped; `modelfleet` runs from this Python (whose
    own path is a host path, never mapped)."""
    mapped = [_rewrite_paths(arg, mounts) for arg in command]
    if mapped and mapped[0] == "modelfleet":
        return [sys.executable, "-m", "modelfleet.cli", *mapped[1:]]
    return mapped


def host_environment(container_env: dict[str, str], mounts: dict[str, str], host_env: Mapping[str, str]) -> dict[str, str]:
    """The container's env with container paths mapped, over the host variables a process needs (those
    are host paths and are never mapped; PATH always stays the host's)."""
    base = {k: v for k, v in host_env.items() if k in HOST_ENV_NAMES}
    mapped = {k: _rewrite_paths(v, mounts) for k, v in container_env.items()}
    return {**base, **mapped, "PATH": host_env.get("PATH", "")}


def _rewrite_paths(text: str, mounts: dict[str, str]) -> str:
    """Replace container paths with their host paths in one pass (the longest mount path wins), so a
    host path written in is never rewritten again by a shorter mount such as /tmp."""
    moved = {c: h for c, h in mounts.items() if c != h}
    if not moved:
        return text
    alternatives = "|".join(re.escape(c) for c in sorted(moved, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({alternatives})(?=/|\b|$)", lambda m: moved[m.group(1)], text)
