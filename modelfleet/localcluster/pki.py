"""Certificates for the local control plane, made with the openssl command-line tool.

One CA signs the API server's serving certificate and a client certificate per component
(client-certificate authentication; RBAC authorises by the certificate's CN and O).
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
}


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

    def client(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _key(path: Path) -> None:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def _sign(pki: Pki, name: str, subject: str, extensions: str) -> None:
    key, csr, crt, ext = (pki.directory / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _key(key)
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key), "-CAcreateserial",
             "-days", "365", "-sha256", "-extfile", str(ext), "-out", str(crt))
    csr.unlink()
    ext.unlink()


def create_pki(directory: Path) -> Pki:
    """Create (or reuse) a CA, the API server's serving certificate, client certificates and the
    service-account signing key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if pki.sa_pub.exists():
        return pki
    _key(pki.ca_key)
    openssl("req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", "/CN=modelfleet-local-ca", "-days", "365",
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", str(pki.ca_cert))
    san = ("DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
           f"DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:{GATEWAY}")
    _sign(pki, "apiserver", "/CN=kube-apiserver",
          f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n")
    _sign(pki, "kubelet-serving", f"/CN={NODE_NAME}",
          "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
          f"subjectAltName=DNS:{NODE_NAME},IP:{GATEWAY}\n")
    for name, (cn, org) in CLIENTS.items():
        subject = f"/CN={cn}" + (f"/O={org}" if org else "")
        _sign(pki, name, subject, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key))
    openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    return pki
