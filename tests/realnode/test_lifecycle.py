"""`cluster up` and `down` with the real node, twice: each up gives a Ready real node, each down leaves nothing
of it on the host (process, listening port, mount, bridge, network namespace, iptables chain, cgroup, sysctl)."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import pytest

from modelfleet.localcluster import LocalCluster, hostnet
from modelfleet.localcluster.processes import alive
from modelfleet.localcluster.realnode import NODE_NAME
from tests.helpers import wait_for
from tests.realnode.conftest import apply, image_pod, wait_running

pytestmark = [pytest.mark.cluster, pytest.mark.own_real_node]


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_up_and_down_twice_leave_nothing_behind() -> None:
    # A short directory: the kubelet's unix sockets under it must fit in 108 bytes (sun_path), which a pytest
    # tmp_path (/tmp/pytest-of-root/pytest-NNN/test_up_and_down_twice_leave_n0/...) does not.
    tmp_path = Path(tempfile.mkdtemp(prefix="mf-lc-"))
    sysctls = {name: hostnet.read_sysctl(name) for name in hostnet.SYSCTLS}
    for round_ in range(2):
        cluster = LocalCluster(tmp_path / f"round-{round_}")
        cluster.up(timeout=180)
        try:
            state = cluster.load_state()
            assert set(state.pids) == set(cluster.components)
            nodes = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in nodes["status"]["conditions"])
            cluster.kubectl("create", "namespace", "probe")
            wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", "probe", check=False).returncode == 0,
                     timeout=30, what="default ServiceAccount")
            apply(cluster, "probe", image_pod(cluster, "sleeper", ["sleep", "600"]))  # a sandbox, a netns, mounts
            wait_running(cluster, "probe", "sleeper")
            assert hostnet.pod_network_namespaces()
            with socket.create_connection((hostnet.GATEWAY, state.ports["kube-apiserver"]), timeout=2):
                pass  # the API server listens where pods reach it
            # The node's fixed ports (kubelet, cluster DNS) and the chosen ones (other programs on this machine
            # listen on ports of their own meanwhile, so only these are checked after `down`).
            ours = (set(state.ports.values()) | {10250, 53}) & listening_ports()
            assert {10250, 53, state.ports["kube-apiserver"], state.ports["kubelet"]} <= ours
        finally:
            cluster.down()
        assert not [name for name, pid in state.pids.items() if alive(pid)]
        assert cluster.leftovers() == []
        assert listening_ports() & ours == set()
        assert {name: hostnet.read_sysctl(name) for name in hostnet.SYSCTLS} == sysctls
