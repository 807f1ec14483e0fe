"""The real node's footprint on the host's network and kernel settings, set up and undone exactly.

Pods live on one Linux bridge whose traffic never leaves this machine: iptables rules (chains of our own,
jumped to first) drop anything between the bridge and any other interface, drop what arrives from outside for
the cluster's addresses, and keep the host from sending cluster-addressed packets anywhere but the bridge.
`teardown` removes every chain the node's components create (ours, the kubelet's, kube-proxy's and the CNI
plugins'), deletes the bridge and pod network namespaces, and restores the sysctls the components change.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

BRIDGE = "modelfleet0"
POD_CIDR = "10.88.0.0/16"
GATEWAY = "10.88.0.1"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS = "10.96.0.10"
CHAIN_PREFIXES = ("MODELFLEET-", "KUBE-", "CNI-")
TABLES = ("filter", "nat", "mangle")
# Changed by the kubelet (vm.*, kernel.*), by kube-proxy (conntrack, route_localnet) or by us.
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
           "vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.conf.all.route_localnet")
WANTED_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}


def firewall_rules(api_port: int) -> dict[str, list[tuple[str, ...]]]:
    """Our chains (jumped to first from INPUT, FORWARD and OUTPUT) and their rules, in order."""
    return {
        "MODELFLEET-INPUT": [
            ("-i", "lo", "-j", "RETURN"),
            ("-i", BRIDGE, "-j", "RETURN"),
            ("-d", POD_CIDR, "-j", "DROP"),          # the kubelet, cluster DNS: only from the host or the pods
            ("-p", "tcp", "--dport", str(api_port), "-j", "DROP"),
        ],
        "MODELFLEET-FORWARD": [
            ("-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"),  # pod to pod (bridged, seen here by br_netfilter)
            ("-i", BRIDGE, "-j", "DROP"),                  # pods never reach another interface...
            ("-o", BRIDGE, "-j", "DROP"),                  # ...nor does anything else reach them
        ],
        "MODELFLEET-OUTPUT": [
            ("-o", "lo", "-j", "RETURN"),
            ("-o", BRIDGE, "-j", "RETURN"),
            # A Service's ClusterIP, DNATed to a pod by kube-proxy: rerouted through the bridge, although `-o`
            # still names the interface of the route to the ClusterIP (the hook's out device is not updated).
            ("-m", "conntrack", "--ctstate", "DNAT", "-j", "RETURN"),
            ("-d", POD_CIDR, "-j", "DROP"),          # cluster addresses never leave through another interface
            ("-d", SERVICE_CIDR, "-j", "DROP"),
        ],
    }


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    if path.exists():
        path.write_text(value)


def setup(api_port: int) -> dict[str, str]:
    """Create the bridge, allow forwarding, install the firewall; return the sysctls' previous values.
    Chains left by a node that died without its teardown are removed first (only one real node may run)."""
    saved = {name: value for name in SYSCTLS if (value := read_sysctl(name)) is not None}
    remove_chains()
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "replace", f"{GATEWAY}/16", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _run("modprobe", "br_netfilter", check=False)  # already loaded in most kernels; needed for Services
    for name, value in WANTED_SYSCTLS.items():
        write_sysctl(name, value)
    for chain, rules in firewall_rules(api_port).items():
        _run("iptables", "-w", "-N", chain)
        for rule in rules:
            _run("iptables", "-w", "-A", chain, *rule)
        _run("iptables", "-w", "-I", chain.removeprefix("MODELFLEET-"), "1", "-j", chain)
    return saved


def our_chains(save_output: str) -> dict[str, list[str]]:
    """From `iptables-save` output: table -> the chains of ours and of the node's components."""
    chains: dict[str, list[str]] = {}
    table = ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and line[1:].split()[0].startswith(CHAIN_PREFIXES):
            chains.setdefault(table, []).append(line[1:].split()[0])
    return chains


def jumps_into(save_output: str, table: str, chains: list[str]) -> list[list[str]]:
    """The rules of built-in chains in `table` that jump to one of `chains`, as `-D` arguments."""
    rules, current = [], ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif current == table and line.startswith("-A "):
            parts = shlex.split(line)  # comments are quoted: "kubernetes service portals"
            if not parts[1].startswith(CHAIN_PREFIXES) and "-j" in parts and parts[parts.index("-j") + 1] in chains:
                rules.append(["-D", *parts[1:]])
    return rules


def remove_chains() -> None:
    """Delete every KUBE-*, CNI-* and MODELFLEET-* chain, and the jumps into them, for IPv4 and IPv6."""
    for tool in ("iptables", "ip6tables"):
        saved = _run(f"{tool}-save", check=False).stdout
        for table, chains in our_chains(saved).items():
            for rule in jumps_into(saved, table, chains):
                _run(tool, "-w", "-t", table, *rule, check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)


def pod_network_namespaces() -> list[str]:
    """Network namespaces containerd's CNI made for pod sandboxes (/run/netns/cni-*)."""
    netns = Path("/run/netns")
    return sorted(p.name for p in netns.glob("cni-*")) if netns.exists() else []


def teardown(saved_sysctls: dict[str, str]) -> None:
    for name in pod_network_namespaces():
        _run("ip", "netns", "delete", name, check=False)
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        _run("ip", "link", "delete", BRIDGE, check=False)
    remove_chains()
    for name, value in saved_sysctls.items():
        write_sysctl(name, value)


def leftovers() -> list[str]:
    """What of the node is still on the host (empty after a clean teardown): for tests and `cluster status`."""
    found = []
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    for tool in ("iptables", "ip6tables"):
        for table, chains in our_chains(_run(f"{tool}-save", check=False).stdout).items():
            found += [f"{tool} {table} chain {chain}" for chain in chains]
    found += [f"network namespace {name}" for name in pod_network_namespaces()]
    return found
