"""Kueue (sigs.k8s.io/kueue), built from its Go module, as an optional host process of the local cluster.

What `hack/build-binaries.sh kueue` leaves in the bin dir: the `kueue` manager and `kueue-config`, Kueue's own
`config/components/{crd,webhook}` from the same module version. From those this module installs the CRDs (with
the conversion webhooks Kueue's kustomization enables) and the admission webhooks for Kueue's own objects
(Workloads, ClusterQueues, ResourceFlavors, Cohorts), pointed at a URL on 127.0.0.1 instead of an
in-cluster Service: the API server runs on this host.

Certificates: Kueue's internal certificate management (the cert-controller rotator) stays on, but it finds a
valid certificate already in its Secret (made here, signed by a CA of its own, valid for the Service name the
rotator checks *and* for 127.0.0.1), keeps it, and injects that CA into the webhook configurations and CRDs.
The webhook server reads the same files from `certs/` (in a pod, the Secret would be mounted there).
Kueue runs with the admin kubeconfig; job integrations stay at Kueue's default (batch/job), but their webhooks
(which intercept every Job or Pod) are not installed: TrainingJobs are integrated by the operator itself
(docs/kueue.md).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from modelfleet.localcluster.pki import openssl

NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"  # Kueue's default; the rotator checks the certificate against <SERVICE>.<NAMESPACE>.svc
SECRET = "kueue-webhook-server-cert"
CA_NAME = "kueue-ca"  # the rotator checks its CA certificate against this name
WEBHOOK_PREFIX = "kueue-"  # Kueue's kustomization's namePrefix: the rotator looks for kueue-{validating,mutating}-...
GROUP = "kueue.x-k8s.io"
PORTS = ("kueue", "kueue-webhook")  # health probes (readyz), webhook server

Kubectl = Callable[..., Any]


@dataclass(frozen=True)
class Kueue:
    """One Kueue manager for one cluster; its files (config, certificates) live in `directory`."""

    directory: Path
    bin_dir: Path
    kubeconfig: str
    health_port: int
    webhook_port: int

    @property
    def config_dir(self) -> Path:
        return self.bin_dir / "kueue-config"

    @property
    def cert_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def command(self) -> list[str]:
        return [str(self.bin_dir / "kueue"), f"--config={self._write_config()}", f"--kubeconfig={self.kubeconfig}",
                # its aggregated visibility API server would listen on every interface and need an APIService
                "--feature-gates=VisibilityOnDemand=false"]

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def install(self, kubectl: Kubectl) -> None:
        """Everything Kueue needs before it starts: its namespace and certificate Secret, CRDs, webhooks."""
        ca = self._certificates()
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE},
                  "type": "Opaque", "data": {name: base64.b64encode((self.cert_dir / name).read_bytes()).decode()
                                             for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")}}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        items = [namespace, secret, *self.crds(ca), *self.webhook_configurations(ca)]
        kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=modelfleet-localcluster", "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), timeout=120)
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{c['metadata']['name']}" for c in items if c["kind"] == "CustomResourceDefinition"))

    def uninstall_webhooks(self, kubectl: Kubectl) -> None:
        """Remove the webhook configurations (they fail requests for Kueue's objects while Kueue is stopped)."""
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            kubectl("delete", kind, self._webhook_name(kind), "--ignore-not-found", check=False)

    # --- manifests, from the module's source ---------------------------------------------------------------------

    def crds(self, ca: bytes) -> list[dict[str, Any]]:
        """config/components/crd/bases, with the conversion webhooks that its kustomization.yaml patches in."""
        crd_dir = self.config_dir / "crd"
        kustomization = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())
        crds = {c["metadata"]["name"]: c for c in (yaml.safe_load((crd_dir / path).read_text())
                                                  for path in kustomization["resources"])}
        for patch in kustomization.get("patches") or []:
            conversion = yaml.safe_load((crd_dir / patch["path"]).read_text())
            name = conversion["metadata"]["name"]
            webhook = conversion["spec"]["conversion"]["webhook"]
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": self.webhook_url + path, "caBundle": base64.b64encode(ca).decode()}
            crds[name]["spec"]["conversion"] = conversion["spec"]["conversion"]
        return list(crds.values())

    def webhook_configurations(self, ca: bytes) -> list[dict[str, Any]]:
        """config/components/webhook/manifests.yaml, only the webhooks for Kueue's own API group, served by URL."""
        result = []
        for config in yaml.safe_load_all((self.config_dir / "webhook" / "manifests.yaml").read_text()):
            hooks = [hook for hook in config["webhooks"] if all(GROUP in rule["apiGroups"] for rule in hook["rules"])]
            for hook in hooks:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": self.webhook_url + path, "caBundle": base64.b64encode(ca).decode()}
            config["metadata"] = {"name": WEBHOOK_PREFIX + config["metadata"]["name"]}
            config["webhooks"] = hooks
            result.append(config)
        return result

    # --- internals -----------------------------------------------------------------------------------------------

    @staticmethod
    def _webhook_name(kind: str) -> str:
        return f"{WEBHOOK_PREFIX}{kind.removesuffix('webhookconfiguration')}-webhook-configuration"

    def _certificates(self) -> bytes:
        """Kueue's CA (an RSA PKCS#1 key: the rotator parses it so) and the webhook server's certificate; returns
        the CA certificate. Made once per directory."""
        d = self.cert_dir
        d.mkdir(parents=True, exist_ok=True)
        ca_key, ca_crt, key, crt = d / "ca.key", d / "ca.crt", d / "tls.key", d / "tls.crt"
        if not crt.exists():
            openssl("genrsa", "-traditional", "-out", str(ca_key), "2048")
            openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", f"/O=kueue/CN={CA_NAME}", "-days", "365",
                    "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
                    "-addext", f"subjectAltName=DNS:{CA_NAME}", "-out", str(ca_crt))
            openssl("genrsa", "-traditional", "-out", str(key), "2048")
            csr, ext = d / "tls.csr", d / "tls.ext"
            openssl("req", "-new", "-key", str(key), "-subj", f"/CN={SERVICE}.{NAMESPACE}.svc", "-out", str(csr))
            ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                           f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVICE}.{NAMESPACE}.svc,IP:127.0.0.1\n")
            openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
                    "-days", "365", "-sha256", "-extfile", str(ext), "-out", str(crt))
            csr.unlink()
            ext.unlink()
            for path in (ca_key, key):
                path.chmod(0o600)
        return ca_crt.read_bytes()

    def _write_config(self) -> Path:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},  # off: it would listen on every interface
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self.cert_dir)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": SERVICE, "webhookSecretName": SECRET},
        }
        path = self.directory / "kueue.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        return path
