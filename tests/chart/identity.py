"""Running the real operator (a host process, see tests/operator/conftest.py) as a ServiceAccount: a kubeconfig
whose only credential is a token of that account, so the API server authorizes and audits every request of
the operator as the chart's identity."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from modelfleet.localcluster import LocalCluster
from tests.operator.conftest import OperatorProcess


def service_account_kubeconfig(cluster: LocalCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the cluster whose only credential is a token of ServiceAccount `namespace`/`account`."""
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
    }))
    return path


def operator_as(cluster: LocalCluster, namespace: str, account: str, directory: Path,
                env: dict[str, str] | None = None, args: list[str] | None = None) -> OperatorProcess:
    """An OperatorProcess (not started) that authenticates as ServiceAccount `namespace`/`account`."""
    kubeconfig = service_account_kubeconfig(cluster, namespace, account, directory / "kubeconfig")
    # OperatorProcess only reads `.env` of the cluster it is given.
    as_account = SimpleNamespace(env={**cluster.env, "KUBECONFIG": str(kubeconfig)})
    # It bids for the release's own Lease, the only one the chart lets it use (beside the release's operator pods,
    # whichever of them leads reconciles, with only the chart's permissions).
    lease = {"MODELFLEET_LEADER_ELECTION_NAMESPACE": namespace, "MODELFLEET_LEADER_ELECTION_LEASE": account}
    return OperatorProcess(as_account, directory / "operator.log", {**lease, **(env or {})}, args)  # type: ignore[arg-type]
