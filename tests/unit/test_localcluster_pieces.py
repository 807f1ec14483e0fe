"""Pure pieces of the local cluster: fake nodes, the real node's configuration and firewall, images, the CLI."""

import json
from pathlib import Path

import pytest
import yaml

from modelfleet.cli import main as cli_main
from modelfleet.localcluster.nodes import fake_nodes
from modelfleet.images import ImageBuilder, build_context_files
from modelfleet.localcluster import hostnet, realnode


def test_fake_nodes_have_gpu_capacity_and_hostname_labels() -> None:
    nodes = {n["metadata"]["name"]: n for n in fake_nodes()}
    assert set(nodes) == {"gpu-node-0", "gpu-node-1", "cpu-node-0"}
    assert nodes["gpu-node-1"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["gpu-node-1"]["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-node-1"
    assert "nvidia.com/gpu" not in nodes["cpu-node-0"]["status"]["capacity"]
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes.values())


def test_cli_rejects_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli_main(["--help"]) == 0
    assert "cluster" in capsys.readouterr().out


def test_poll_until_returns_the_value_stops_on_guard_and_times_out() -> None:
    import time

    from modelfleet.localcluster.processes import poll_until

    answers = iter([None, 0, "ready"])
    assert poll_until(lambda: next(answers), time.monotonic() + 5, "never", interval=0) == "ready"

    def dead() -> None:
        raise RuntimeError("process exited")

    with pytest.raises(RuntimeError, match="process exited"):
        poll_until(lambda: None, time.monotonic() + 5, "never", dead)
    with pytest.raises(TimeoutError, match="gave up"):
        poll_until(lambda: None, time.monotonic() + 0.05, "gave up", interval=0.01)


def test_fake_nodes_next_to_a_real_node_are_tainted() -> None:
    nodes = {n["metadata"]["name"]: n for n in fake_nodes(tainted=True)}
    assert nodes["gpu-node-0"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert nodes["cpu-node-0"]["spec"]["taints"] == [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
    assert all(n["spec"]["taints"] == [] for n in fake_nodes())


def test_firewall_keeps_pod_traffic_on_the_bridge() -> None:
    rules = hostnet.firewall_rules(api_port=6443)
    assert set(rules) == {"MODELFLEET-INPUT", "MODELFLEET-FORWARD", "MODELFLEET-OUTPUT"}
    forward = rules["MODELFLEET-FORWARD"]
    assert forward[0] == ("-i", hostnet.BRIDGE, "-o", hostnet.BRIDGE, "-j", "ACCEPT")
    assert ("-i", hostnet.BRIDGE, "-j", "DROP") in forward and ("-o", hostnet.BRIDGE, "-j", "DROP") in forward
    inbound = rules["MODELFLEET-INPUT"]
    # loopback and the bridge first, then the drops for everything else
    assert inbound[:2] == [("-i", "lo", "-j", "RETURN"), ("-i", hostnet.BRIDGE, "-j", "RETURN")]
    assert ("-p", "tcp", "--dport", "6443", "-j", "DROP") in inbound
    outbound = rules["MODELFLEET-OUTPUT"]
    assert ("-d", hostnet.SERVICE_CIDR, "-j", "DROP") in outbound and ("-d", hostnet.POD_CIDR, "-j", "DROP") in outbound
    # ClusterIP traffic kube-proxy DNATed to a pod is let through before those drops
    assert outbound.index(("-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN")) < outbound.index(
        ("-d", hostnet.POD_CIDR, "-j", "DROP"))


SAVED = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:MODELFLEET-INPUT - [0:0]
:OTHER - [0:0]
-A INPUT -j MODELFLEET-INPUT
-A INPUT -j KUBE-FIREWALL
-A INPUT -j OTHER
-A KUBE-FIREWALL -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
COMMIT
"""


def test_teardown_finds_every_chain_of_the_node_and_the_jumps_into_them() -> None:
    chains = hostnet.our_chains(SAVED)
    assert chains == {"filter": ["KUBE-FIREWALL", "MODELFLEET-INPUT"], "nat": ["KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]}
    assert hostnet.jumps_into(SAVED, "filter", chains["filter"]) == [
        ["-D", "INPUT", "-j", "MODELFLEET-INPUT"], ["-D", "INPUT", "-j", "KUBE-FIREWALL"]]
    assert hostnet.jumps_into(SAVED, "nat", chains["nat"]) == [
        ["-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]]


def test_kubelet_config_fits_this_machine_and_never_uses_its_resolver(tmp_path: Path) -> None:
    config = realnode.kubelet_config(tmp_path, tmp_path / "resolv.conf", 10248)
    assert config["oomScoreAdj"] == 0 and config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False
    assert config["clusterDNS"] == [hostnet.CLUSTER_DNS] and config["resolvConf"] == str(tmp_path / "resolv.conf")
    assert config["address"] == hostnet.GATEWAY and config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False and config["authorization"]["mode"] == "Webhook"
    assert config["imageGCHighThresholdPercent"] == 100  # images cannot be pulled again
    yaml.safe_dump(config)


def test_containerd_and_cni_config(tmp_path: Path) -> None:
    toml = realnode.containerd_config("localhost/modelfleet-pause:abc", tmp_path / "cni")
    assert 'sandbox_image = "localhost/modelfleet-pause:abc"' in toml and "restrict_oom_score_adj = true" in toml
    assert f'address = "{realnode.CONTAINERD_SOCKET}"' in toml and "SystemdCgroup = false" in toml
    cni = realnode.cni_config(tmp_path / "ipam")
    bridge = cni["plugins"][0]
    assert bridge["bridge"] == hostnet.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    json.dumps(cni)


def test_cluster_dns_has_no_upstream(tmp_path: Path) -> None:
    corefile = realnode.corefile(tmp_path / "kc", 1, 2)
    assert f"bind {hostnet.GATEWAY}" in corefile and "kubernetes cluster.local" in corefile
    assert "forward" not in corefile
    service, slice_ = realnode.dns_objects()[:2]
    assert service["spec"]["clusterIP"] == hostnet.CLUSTER_DNS and "selector" not in service["spec"]
    assert slice_["endpoints"][0]["addresses"] == [hostnet.GATEWAY]


def test_local_volumes_are_shared_and_pinned_to_the_real_node(tmp_path: Path) -> None:
    storage_class, *volumes = realnode.storage_objects(tmp_path, 3)
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert len(volumes) == 3 and all("ReadWriteMany" in v["spec"]["accessModes"] for v in volumes)
    terms = volumes[0]["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [realnode.NODE_NAME]
    assert volumes[2]["spec"]["hostPath"]["path"] == str(tmp_path / "02")


def test_image_tags_follow_the_build_context(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for name, text in {".dockerignore": "*\n!pyproject.toml\n!pkg/\n**/__pycache__/\n", "pyproject.toml": "a",
                       "pkg/mod.py": "x = 1", "pkg/__pycache__/mod.pyc": "junk", "notes.txt": "outside",
                       "images/runtime.Dockerfile": "FROM x", "images/operator.Dockerfile": "FROM y",
                       "hack/go/pause/main.go": "package main"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert [p.relative_to(root).as_posix() for p in build_context_files(root)] == ["pyproject.toml", "pkg/mod.py"]
    builder = ImageBuilder(tmp_path / "store", root)
    before = builder.refs()
    assert before["runtime"].startswith("localhost/modelfleet:cpu-")
    (root / "notes.txt").write_text("changed")            # outside the context: same tags
    (root / "pkg/__pycache__/mod.pyc").write_text("other")
    assert builder.refs() == before
    (root / "pkg/mod.py").write_text("x = 2")              # the code: new tags for both Dockerfile images
    after = builder.refs()
    assert after["runtime"] != before["runtime"] and after["operator"] != before["operator"]
    assert after["pause"] == before["pause"]
    # after the code change the old tags are what a prune removes; the current ones, the base and others stay
    listed = [*before.values(), *after.values(), builder.base_ref(), "docker.io/library/busybox:1"]
    assert sorted(builder.stale(listed)) == sorted({before["runtime"], before["operator"]})


def test_the_real_node_says_it_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode.os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match=r"needs root .* --no-real-node"):
        realnode.RealNode.check_host()


def test_a_second_real_node_on_the_machine_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(realnode, "OWNER_FILE", tmp_path / "run" / "owner")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    node = realnode.RealNode(tmp_path / "node", tmp_path, tmp_path)
    node.claim(first)
    (first / "state.json").write_text("{}")  # the first cluster is running
    with pytest.raises(RuntimeError, match=f"another local cluster's real node is running \\({first}\\)"):
        node.claim(second)
    (first / "state.json").unlink()  # stopped: its claim is stale
    node.claim(second)
    assert (tmp_path / "run" / "owner").read_text() == str(second)


def test_a_real_node_whose_processes_died_is_cleaned_up_and_taken_over(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed session leaves its claim and state behind; the next `cluster up` must not refuse forever."""
    import subprocess

    from modelfleet.localcluster.cluster import LocalCluster

    monkeypatch.setattr(realnode, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(realnode, "OWNER_FILE", tmp_path / "run" / "owner")
    downed: list[Path] = []
    monkeypatch.setattr(LocalCluster, "down", lambda self: downed.append(self.directory))
    dead = subprocess.Popen(["true"])
    dead.wait()
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    realnode.RealNode(tmp_path / "node", tmp_path, tmp_path).claim(old)

    live = subprocess.Popen(["sleep", "60"])
    try:
        (old / "state.json").write_text(json.dumps({"real_node": True, "pids": {"sleep": live.pid}}))
        LocalCluster(new)._take_over_from_a_dead_owner()
        assert downed == [], "a real node with a live process was brought down"
    finally:
        live.kill()
        live.wait()

    (old / "state.json").write_text(json.dumps({"real_node": True, "pids": {"kube-apiserver": dead.pid}}))
    LocalCluster(new)._take_over_from_a_dead_owner()
    assert downed == [old.resolve()]


def test_prometheus_config_passes_promtool_and_keeps_annotated_pods_with_their_labels(tmp_path: Path) -> None:
    import subprocess

    from modelfleet.localcluster.prometheus import scrape_config

    config = scrape_config("http://127.0.0.1:9999/targets", "2s")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    relabel = config["scrape_configs"][0]["relabel_configs"]
    assert {"namespace", "pod", "__metrics_path__"} <= {r.get("target_label") for r in relabel}
    assert relabel[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


def test_pod_discovery_lists_running_pods_with_an_ip_at_their_metrics_port() -> None:
    from modelfleet.localcluster.prometheus import target_groups

    def pod(name: str, phase: str = "Running", ip: str | None = "10.88.0.7", **annotations: str) -> dict:
        return {"metadata": {"name": name, "namespace": "ml", "labels": {"modelfleet.dev/modeldeployment": "chat"},
                             "annotations": annotations},
                "spec": {"nodeName": "n", "containers": [{"ports": [{"containerPort": 8000}]}]},
                "status": {"phase": phase, **({"podIP": ip} if ip else {})}}

    groups = target_groups([pod("a", **{"prometheus.io/scrape": "true", "prometheus.io/port": "9000"}), pod("b"),
                            pod("pending", phase="Pending"), pod("no-ip", ip=None)])
    assert [g["targets"] for g in groups] == [["10.88.0.7:9000"], ["10.88.0.7:8000"]]
    labels = groups[0]["labels"]
    assert labels["__meta_kubernetes_pod_name"] == "a" and labels["__meta_kubernetes_namespace"] == "ml"
    assert labels["__meta_kubernetes_pod_label_modelfleet_dev_modeldeployment"] == "chat"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"


def test_metrics_adapter_exposes_the_operators_metrics_under_their_own_names() -> None:
    from modelfleet.localcluster.metricsadapter import adapter_rules, api_objects
    from modelfleet_operator.modeldeployment.spec import METRICS

    [rule] = adapter_rules()["rules"]
    assert all(name.removeprefix("vllm:") in rule["seriesQuery"] for name in METRICS.values())
    assert rule["name"] == {"matches": "^(.*)$", "as": "${1}"}  # the HPA asks for vllm:num_requests_waiting as is
    objects = {o["kind"] + "/" + o["metadata"]["name"]: o for o in api_objects(8443, b"CA")}
    slice_ = objects["EndpointSlice/modelfleet-metrics-adapter-host"]
    assert slice_["endpoints"][0]["addresses"] == [hostnet.GATEWAY] and slice_["ports"][0]["port"] == 8443
    assert objects["APIService/v1beta2.custom.metrics.k8s.io"]["spec"]["service"]["name"] == "modelfleet-metrics-adapter"
