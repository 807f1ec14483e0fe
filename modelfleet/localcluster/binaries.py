"""Where the control plane's binaries live, and building them (once) when they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
KWOK_CONFIG = REPO_ROOT / "hack" / "kwok" / "kwok.yaml"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy",
              "kwok", "helm", "coredns", "pause", "prometheus-adapter")
OPTIONAL = {"kueue": ("kueue", "kueue-config")}  # built only when asked for (hack/build-binaries.sh kueue)


def cache_dir() -> Path:
    return Path(os.environ.get("MODELFLEET_CACHE", Path.home() / ".cache" / "modelfleet"))


def ensure_binaries(optional: tuple[str, ...] = ()) -> Path:
    """Build any missing binary (cold: ~10 minutes on 2 cores; warm: instant), and the `optional` components
    named (OPTIONAL's keys), and return the bin dir."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), *optional], check=True, stdout=subprocess.PIPE, text=True)
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    wanted = COMPONENTS + tuple(name for component in optional for name in OPTIONAL[component])
    missing = [c for c in wanted if not (bin_dir / c).exists()]
    if missing:
        raise RuntimeError(f"build finished but binaries are missing: {', '.join(missing)}")
    return bin_dir
