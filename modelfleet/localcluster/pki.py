"""Certificates for the local control plane, made with the openssl command-line tool.

One CA signs the API server's serving certificate and a client certificate per component
(client-certificate authentication; RBAC authorises by the certificate's CN and O). A second CA, the front
proxy's, signs only the client certificate with which the API server proxies to aggregated API servers (the
metrics adapter): they trust the user named in its request headers because that CA signed the caller.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelfleet.localcluster.hostnet import GATEWAY
from modelfleet.localcluster.realnode import NODE_NAME

CLIENTS = {
    # name: (common name = user, organisation = group)
    "admin": ("modelfleet-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kwok": ("modelfleet-kwok", "system:masters"),
    # The real node's components (Node authorizer + NodeRestriction for the kubelet; the default
    # system:node-proxier binding for kube-proxy; a ClusterRole of its own for CoreDNS).
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", ""),
    "coredns": ("modelfleet-coredns", ""),
    # The API server towards the kubelet (logs, exec, port-forward), bound to system:kubelet-api-admin.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ""),
    # Host processes of the metrics pipeline (prometheus.py, metricsadapter.py), each with a ClusterRole of its own.
    "prometheus": ("modelfleet-prometheus", ""),
    "metrics-adapter": ("modelfleet-metrics-adapter", ""),
}
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.directory / "sa.pub"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.directory / "front-proxy-ca.crt"

    @property
    def front_proxy_ca_key(self) -> Path:
        return self.directory / "front-proxy-ca.key"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _key(path: Path) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _ca(cert: Path, key: Path, name: str) -> None:
    _key(key)
    openssl("req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "365",
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(cert))


def _sign(pki: Pki, name: str, subject: str, extensions: str, ca: tuple[Path, Path] | None = None) -> None:
    key, csr, crt, ext = (pki.directory / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ca_cert, ca_key = ca or (pki.ca_cert, pki.ca_key)
    _key(key)
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "365", "-sha256", "-extfile", str(ext), "-out", str(crt))
    csr.unlink()
    ext.unlink()


CLIENT_EXTENSIONS = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"


def sign_serving(pki: Pki, name: str, dns_names: list[str]) -> tuple[Path, Path]:
    """A serving certificate from the cluster CA (for a host process that the API server calls)."""
    san = ",".join(f"DNS:{n}" for n in dns_names)
    _sign(pki, name, f"/CN={dns_names[0]}",
          f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
    return pki.client(name)


def _ensure_front_proxy(pki: Pki) -> None:
    if pki.client(FRONT_PROXY_CLIENT)[0].exists():
        return
    _ca(pki.front_proxy_ca_cert, pki.front_proxy_ca_key, "modelfleet-front-proxy-ca")
    _sign(pki, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", CLIENT_EXTENSIONS,
          ca=(pki.front_proxy_ca_cert, pki.front_proxy_ca_key))


def create_pki(directory: Path) -> Pki:
    """Create (or reuse) a CA, the API server's serving certificate, client certificates, the front proxy's CA
    and client certificate, and the service-account signing key pair. In a reused directory, certificates
    that an older version did not make are added."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if pki.sa_pub.exists():
        for name, (cn, org) in CLIENTS.items():
            if not pki.client(name)[0].exists():
                _sign(pki, name, f"/CN={cn}" + (f"/O={org}" if org else ""), CLIENT_EXTENSIONS)
        _ensure_front_proxy(pki)
        return pki
    _ca(pki.ca_cert, pki.ca_key, "modelfleet-local-ca")
    san = ("DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
           f"DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:{GATEWAY}")
    _sign(pki, "apiserver", "/CN=kube-apiserver",
          f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
    _sign(pki, "kubelet-serving", f"/CN={NODE_NAME}",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
          f"subjectAltName=DNS:{NODE_NAME},IP:{GATEWAY}\n")
    for name, (cn, org) in CLIENTS.items():
        _sign(pki, name, f"/CN={cn}" + (f"/O={org}" if org else ""), CLIENT_EXTENSIONS)
    _ensure_front_proxy(pki)
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key))
    openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    return pki
