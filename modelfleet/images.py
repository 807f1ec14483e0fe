"""`modelfleet images build | list | load | prune`: the project's container images, built without Docker or a registry.

- a Debian bookworm base (python3.11 and a venv at /opt/venv on PATH) made with mmdebstrap from Debian's
  packages, standing in for `python:3.11-slim-bookworm`;
- a pause image (the pod sandbox) from hack/go/pause, since registry.k8s.io cannot be reached;
- images/operator.Dockerfile and images/runtime.Dockerfile (CPU variant), built unchanged by buildah.

Every image is tagged by a hash of everything it is built from (Dockerfile, build arguments, base, and the
build context that .dockerignore lets through), so a build is skipped when its tag already exists, and buildah's
layer cache rebuilds only the project's code layer after a code change. `load` streams images into the local
node's containerd. Every new build prunes the tags it replaced (in buildah's storage, its OCI layout and the
node's containerd), so the cache does not grow by an image per code change; `prune` does it by hand. Storage lives under the cache directory (~/.cache/modelfleet/buildah), outside the repo.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.localcluster.binaries import REPO_ROOT, cache_dir

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd", "tar")
BASE_RECIPE = (f"mmdebstrap --variant=minbase --include={','.join(BASE_PACKAGES)} bookworm; "
               "python3 -m venv /opt/venv; PATH=/opt/venv/bin; PIP_CERT; LANG=C.UTF-8")
PATH_ENV = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class DockerfileImage:
    """An image built from one of images/*.Dockerfile."""

    repository: str
    dockerfile: str
    build_args: dict[str, str] = field(default_factory=dict)
    tag_prefix: str = ""


PROJECT_REPOSITORY = "localhost/modelfleet"  # every image below is named under it
DOCKERFILE_IMAGES = {
    "operator": DockerfileImage("localhost/modelfleet-operator", "images/operator.Dockerfile"),
    "runtime": DockerfileImage("localhost/modelfleet", "images/runtime.Dockerfile", {"TORCH_VARIANT": "cpu"}, "cpu-"),
}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:12]


def build_context_files(root: Path = REPO_ROOT) -> list[Path]:
    """The files of the build context: what .dockerignore lets through (its `!` entries, less its exclusions)."""
    lines = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()]
    included = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    excluded = [line.removeprefix("**/").rstrip("/") for line in lines
                if line and line != "*" and not line.startswith(("#", "!"))]
    files: list[Path] = []
    for entry in included:
        path = root / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            parts = candidate.relative_to(root).parts
            if not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in excluded):
                files.append(candidate)
    return files


class ImageBuilder:
    """Builds and loads the images, with buildah's storage under `store`."""

    def __init__(self, store: Path | None = None, root: Path = REPO_ROOT, say=print) -> None:  # noqa: ANN001
        self.store = Path(store or cache_dir() / "buildah")
        self.root = root
        self.say = say

    # -- tags --------------------------------------------------------------------------------------
    def base_ref(self) -> str:
        return f"localhost/modelfleet-base:bookworm-{_digest(BASE_RECIPE.encode())}"

    def pause_ref(self) -> str:
        return f"localhost/modelfleet-pause:{_digest((self.root / 'hack/go/pause/main.go').read_bytes())}"

    def ref(self, name: str) -> str:
        image = DOCKERFILE_IMAGES[name]
        context = b"".join(str(p.relative_to(self.root)).encode() + b"\0" + p.read_bytes()
                           for p in build_context_files(self.root))
        args = "\0".join(f"{k}={v}" for k, v in sorted(image.build_args.items()))
        tag = _digest((self.root / image.dockerfile).read_bytes(), args.encode(), self.base_ref().encode(), context)
        return f"{image.repository}:{image.tag_prefix}{tag}"

    def refs(self) -> dict[str, str]:
        """Every image the local node needs: name -> reference."""
        return {"pause": self.pause_ref(), **{name: self.ref(name) for name in DOCKERFILE_IMAGES}}

    # -- buildah -------------------------------------------------------------------------------------
    @property
    def _buildah_command(self) -> list[str]:
        """buildah with its storage under the store, not the machine's /var/lib/containers."""
        return ["buildah", "--root", str(self.store / "storage"), "--runroot", str(self.store / "run"),
                "--storage-driver", "overlay"]

    def buildah(self, *args: str, capture: bool = True, input: bytes | None = None) -> str:  # noqa: A002
        command = [*self._buildah_command, *args]
        result = subprocess.run(command, input=input, stdout=subprocess.PIPE if capture else None,
                                stderr=subprocess.PIPE if capture else None)
        if result.returncode != 0:
            detail = (result.stderr or b"").decode(errors="replace").strip()[-3000:] if capture else ""
            raise RuntimeError(f"buildah {' '.join(args[:2])} failed ({result.returncode}): {detail}")
        return (result.stdout or b"").decode().strip()

    def exists(self, ref: str) -> bool:
        return subprocess.run([*self._buildah_command, "inspect", "--type", "image", ref],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def build_all(self) -> dict[str, str]:
        """Build what is missing (base, pause, the Dockerfiles) and return name -> reference."""
        require_tools("buildah", "mmdebstrap")
        self.store.mkdir(parents=True, exist_ok=True)
        refs = self.refs()
        missing = [ref for ref in refs.values() if not self.exists(ref)]
        self._build_base()
        self._build_pause()
        for name in DOCKERFILE_IMAGES:
            self._build_dockerfile(name)
        if missing:
            self.prune(refs=refs)
        return refs

    # -- pruning ---------------------------------------------------------------------------------------
    def stale(self, listed: list[str], refs: dict[str, str] | None = None) -> list[str]:
        """The project's image references in `listed` that are neither current (`refs`, default: computed) nor
        the base."""
        keep = {*(refs or self.refs()).values(), self.base_ref()}
        return [ref for ref in listed if ref.startswith(PROJECT_REPOSITORY) and ref not in keep]

    def prune(self, containerd_socket: Path | None = None, refs: dict[str, str] | None = None) -> list[str]:
        """Remove the project's superseded images from buildah's storage and its OCI layout (and from a
        containerd, when given); return the references removed. Layers the current images share stay."""
        refs = refs or self.refs()  # hashing the build context once, not per store
        removed = self.stale(self.buildah("images", "--format", "{{.Name}}:{{.Tag}}").split(), refs)
        for ref in removed:
            self.buildah("rmi", ref)
        self.buildah("rmi", "--prune")  # the dangling images the removed ones' build stages left
        self._prune_oci_layout(refs)
        if containerd_socket is not None and containerd_socket.exists():
            removed += self.prune_containerd(containerd_socket, refs)
        if removed:
            self.say(f"pruned {len(removed)} superseded image(s): {', '.join(removed)}")
        return removed

    def prune_containerd(self, containerd_socket: Path, refs: dict[str, str] | None = None) -> list[str]:
        ctr = ["ctr", "--address", str(containerd_socket), "--namespace", "k8s.io"]
        removed = self.stale(_run([*ctr, "images", "ls", "-q"]).split(), refs)
        if removed:
            _run([*ctr, "images", "rm", "--sync", *removed])  # --sync: garbage-collect their content now
        return removed

    def _prune_oci_layout(self, refs: dict[str, str]) -> None:
        """Keep only the current images' manifests in the OCI layout `load` exports through, and their blobs."""
        layout = self.store / "oci"
        if not (layout / "index.json").exists():
            return
        current = {_layout_name(ref) for ref in refs.values()}
        index = json.loads((layout / "index.json").read_text())
        index["manifests"] = [m for m in index["manifests"]
                              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") in current]
        used = {digest for descriptor in index["manifests"] for digest in _image_blobs(layout, descriptor)}
        (layout / "index.json").write_text(json.dumps(index))
        for path in (layout / "blobs" / "sha256").iterdir():
            if f"sha256:{path.name}" not in used:
                path.unlink()

    def _timed(self, what: str, ref: str, build) -> None:  # noqa: ANN001
        if self.exists(ref):
            return
        self.say(f"building {what} image {ref}")
        start = time.monotonic()
        build()
        self.say(f"built {ref} in {time.monotonic() - start:.0f}s")

    def _build_base(self) -> None:
        ref = self.base_ref()

        def build() -> None:
            with tempfile.TemporaryDirectory(dir=self.store) as tmp:
                rootfs = Path(tmp) / "rootfs.tar"
                subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                                "--dpkgopt=path-exclude=/usr/share/locale/*",
                                "--customize-hook=chroot \"$1\" python3 -m venv /opt/venv",
                                "bookworm", str(rootfs)], check=True)
                container = self.buildah("from", "scratch")
                try:
                    self.buildah("add", container, str(rootfs), "/")
                    # pip inside image builds verifies PyPI against the system's CA store (the host's store is
                    # bind-mounted over it during builds), not pip's own bundle.
                    self.buildah("config", "--env", f"PATH={PATH_ENV}", "--env", f"PIP_CERT={CA_BUNDLE}",
                                 "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
                    self.buildah("commit", "--rm", container, ref)
                except BaseException:
                    self.buildah("rm", container)
                    raise

        self._timed("the Debian base", ref, build)

    def _build_pause(self) -> None:
        from modelfleet.localcluster.binaries import ensure_binaries

        ref = self.pause_ref()

        def build() -> None:
            container = self.buildah("from", "scratch")
            try:
                self.buildah("copy", container, str((ensure_binaries() / "pause").resolve()), "/pause")
                self.buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
                self.buildah("commit", "--rm", container, ref)
            except BaseException:
                self.buildah("rm", container)
                raise

        self._timed("the pause", ref, build)

    def _build_dockerfile(self, name: str) -> None:
        image, ref = DOCKERFILE_IMAGES[name], self.ref(name)
        args = [f"--build-arg=PYTHON_IMAGE={self.base_ref()}",
                *(f"--build-arg={k}={v}" for k, v in image.build_args.items())]
        self._timed(name, ref, lambda: self.buildah(
            "bud", "--isolation", "chroot", "--network", "host", "--layers", "--pull=never", "--quiet",
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", *args, "-f", image.dockerfile, "-t", ref, str(self.root),
            capture=False))

    # -- containerd ------------------------------------------------------------------------------------
    def load(self, refs: list[str], containerd_socket: Path) -> list[str]:
        """Load the images containerd (namespace k8s.io, the kubelet's) lacks into it; return those loaded.

        Only the blobs containerd does not have travel: buildah writes the image into an OCI layout under the
        store (reusing the blobs already there), and containerd imports an archive of its manifest, config and
        new layers, so after a code change only the small code layer is copied and unpacked."""
        ctr = ["ctr", "--address", str(containerd_socket), "--namespace", "k8s.io"]
        present = set(_run([*ctr, "images", "ls", "-q"]).split())
        loaded = []
        for ref in refs:
            if ref in present:
                continue
            start = time.monotonic()
            have = set(_run([*ctr, "content", "ls", "-q"]).split())
            blobs, index = self._oci_export(ref)
            sent = [digest for digest in blobs if digest not in have or blobs[digest][1]]
            importer = subprocess.Popen([*ctr, "images", "import", "-"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert importer.stdin is not None
            with tarfile.open(fileobj=importer.stdin, mode="w|") as archive:
                _add_bytes(archive, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
                _add_bytes(archive, "index.json", json.dumps(index).encode())
                for digest in sent:
                    archive.add(blobs[digest][0], arcname=f"blobs/sha256/{digest.removeprefix('sha256:')}")
            importer.stdin.close()
            if importer.wait() != 0:
                assert importer.stderr is not None
                raise RuntimeError(f"loading {ref} into containerd failed: {importer.stderr.read().decode()[-2000:]}")
            size = sum(blobs[d][0].stat().st_size for d in sent) / 1e6
            self.say(f"loaded {ref} into the node's containerd ({size:.0f} MB new) in {time.monotonic() - start:.0f}s")
            loaded.append(ref)
        return loaded

    def _oci_export(self, ref: str) -> tuple[dict[str, tuple[Path, bool]], dict[str, Any]]:
        """Write `ref` into the store's OCI layout; return its blobs (digest -> (file, always send)) and an
        index naming it for containerd."""
        layout = self.store / "oci"
        name = _layout_name(ref)
        self.buildah("push", "--quiet", "--disable-compression", ref, f"oci:{layout}:{name}")
        [descriptor] = [m for m in json.loads((layout / "index.json").read_text())["manifests"]
                        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name]
        manifest_digest, config_digest, *layers = _image_blobs(layout, descriptor)
        blobs = {digest: (_blob(layout, digest), True) for digest in (manifest_digest, config_digest)}
        blobs.update({digest: (_blob(layout, digest), False) for digest in layers})
        index = {"schemaVersion": 2, "manifests": [{**descriptor, "annotations": {
            "io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}]}
        return blobs, index


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _image_blobs(layout: Path, descriptor: dict[str, Any]) -> list[str]:
    """The digests an image of the OCI layout consists of: its manifest, its config, then its layers."""
    manifest = json.loads(_blob(layout, descriptor["digest"]).read_text())
    return [descriptor["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def _layout_name(ref: str) -> str:
    """An image's reference inside the OCI layout (no ':' or '/' allowed there)."""
    return hashlib.sha256(ref.encode()).hexdigest()[:16]


def _run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def chart_values(refs: dict[str, str]) -> dict[str, Any]:
    """Helm values that make the chart use the locally built images (never pulled: no registry has them)."""
    repository, tag = refs["operator"].rsplit(":", 1)
    return {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "workloadImages": {"trainer": refs["runtime"], "runtime": refs["runtime"], "pullPolicy": "Never"}}


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run `bash hack/install-deps.sh` (as root) to install "
                           "the Debian packages the local cluster's real node needs")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="modelfleet images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("build", "list", "load", "prune"))
    parser.add_argument("--store", type=Path, default=None, help="buildah's storage (default: ~/.cache/modelfleet/buildah)")
    parser.add_argument("--containerd-socket", type=Path, default=None,
                        help="for load: the containerd to load into (default: the local cluster's real node)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("building images with buildah needs root here (rootless buildah needs user namespaces)")
    builder = ImageBuilder(args.store)
    if args.action == "list":
        for name, ref in builder.refs().items():
            print(f"{name:<10} {ref}  {'built' if builder.exists(ref) else 'not built'}")
        return 0
    if args.action == "prune":
        from modelfleet.localcluster.realnode import CONTAINERD_SOCKET

        removed = builder.prune(args.containerd_socket or CONTAINERD_SOCKET)
        print(f"removed {len(removed)} superseded image(s)")
        return 0
    refs = builder.build_all()
    if args.action == "load":
        from modelfleet.localcluster.realnode import CONTAINERD_SOCKET

        builder.load(list(refs.values()), args.containerd_socket or CONTAINERD_SOCKET)
    for name, ref in refs.items():
        print(f"{name:<10} {ref}")
    return 0
