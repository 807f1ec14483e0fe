"""The real node: a kubelet with containerd next to kwok's fake GPU nodes, running pods from the project's own
images, with logs, exec, cluster DNS (including headless hostname.subdomain names), Services through
kube-proxy, the API server reachable from pods, and local volumes shared by pods."""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest

from modelfleet.localcluster import LocalCluster
from modelfleet.localcluster.realnode import NODE_NAME
from tests.helpers import wait_for
from tests.realnode.conftest import apply, claim, get, image_pod, kubectl_exec, wait_running

pytestmark = pytest.mark.cluster


def test_a_real_node_is_ready_next_to_the_fake_gpu_nodes(cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    real = nodes[NODE_NAME]
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert real["status"]["nodeInfo"]["kubeletVersion"] == json.loads(
        cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in real["status"]["conditions"])
    assert "kwok.x-k8s.io/node" not in real["metadata"].get("annotations", {})
    assert real["metadata"]["labels"]["modelfleet.dev/node"] == "real" and not real["spec"].get("taints")
    gpu_nodes = [n for n in nodes.values() if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"]
    assert len(gpu_nodes) == 2 and all(n["spec"]["taints"][0]["key"] == "nvidia.com/gpu" for n in gpu_nodes)


def test_a_restricted_pod_from_the_runtime_image_runs_with_logs_and_exec(cluster: LocalCluster, namespace: str) -> None:
    apply(cluster, namespace, image_pod(cluster, "hello", ["python3", "-c",
                                                            "import time, torch; print('hello from', torch.__version__, flush=True); time.sleep(600)"]))
    wait_running(cluster, namespace, "hello")
    logs = wait_for(lambda: cluster.kubectl("logs", "-n", namespace, "hello").stdout, timeout=60, what="logs")
    assert logs.startswith("hello from 2.")
    assert kubectl_exec(cluster, namespace, "hello", "id", "-u").strip() == "65532"
    # The image's user owns nothing it could abuse: the root filesystem's system paths are not writable.
    assert "Permission denied" in cluster.kubectl("exec", "-n", namespace, "hello", "--", "sh", "-c",
                                                  "touch /usr/x 2>&1 || true").stdout


def test_cluster_dns_services_and_the_api_server_from_a_pod(cluster: LocalCluster, namespace: str) -> None:
    server = image_pod(cluster, "web-0", ["python3", "-m", "http.server", "8080", "--directory", "/etc"],
                       hostname="web-0", subdomain="web-peers", labels={"app": "web"})
    apply(cluster, namespace, server,
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-peers"},
           "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "web"},
                    "ports": [{"port": 8080}]}},
          image_pod(cluster, "client", ["sleep", "600"]))
    server_pod = wait_running(cluster, namespace, "web-0")
    wait_running(cluster, namespace, "client")
    probe = textwrap.dedent(f"""
        import json, socket, ssl, urllib.request
        out = {{}}
        out["service"] = socket.gethostbyname("web")
        out["headless"] = socket.gethostbyname("web-0.web-peers.{namespace}.svc.cluster.local")
        out["page"] = urllib.request.urlopen("http://web/hostname", timeout=10).read().decode()
        context = ssl.create_default_context(cafile="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
        out["api"] = json.load(urllib.request.urlopen("https://kubernetes.default.svc/version", context=context, timeout=10))
        try:
            socket.gethostbyname("pypi.org")
            out["outside"] = "resolved"
        except OSError:
            out["outside"] = "unresolved"
        print(json.dumps(out))
    """)
    result = wait_for(lambda: json.loads(kubectl_exec(cluster, namespace, "client", "python3", "-c", probe)),
                      timeout=60, what="DNS, Service and API server from a pod")
    service_ip = get(cluster, namespace, "service", "web")["spec"]["clusterIP"]
    assert result["service"] == service_ip
    assert result["headless"] == server_pod["status"]["podIP"]
    assert result["page"].strip() == "web-0"  # /etc/hostname of the server pod, through the ClusterIP Service
    assert result["api"]["gitVersion"].startswith("v1.")
    assert result["outside"] == "unresolved"  # cluster DNS has no upstream: pods never use the machine's resolver
    # The host reaches the Service's ClusterIP too (kube-proxy's DNAT, then the bridge), as a client on the node would.
    page = wait_for(lambda: _host_get(f"http://{service_ip}/hostname"), timeout=30, what="the ClusterIP from the host")
    assert page.strip() == "web-0"


def _host_get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None


def test_pods_share_a_local_volume_across_uids(cluster: LocalCluster, namespace: str) -> None:
    host_dir = claim(cluster, namespace, "shared")
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]}
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    writer = image_pod(cluster, "writer", ["sh", "-c", "echo written-by-$(id -u) > /data/note && sleep 600"],
                       container=mount, **volume)
    reader = image_pod(cluster, "reader", ["sleep", "600"], container=mount, **volume)
    reader["spec"]["securityContext"] |= {"runAsUser": 4242, "runAsGroup": 4242, "fsGroup": 4242}
    apply(cluster, namespace, writer, reader)
    wait_running(cluster, namespace, "writer")
    wait_running(cluster, namespace, "reader")
    note = wait_for(lambda: kubectl_exec(cluster, namespace, "reader", "cat", "/data/note"), timeout=30, what="note")
    assert note.strip() == "written-by-65532"
    assert (host_dir / "note").read_text().strip() == "written-by-65532"  # the claim is this directory on the node
