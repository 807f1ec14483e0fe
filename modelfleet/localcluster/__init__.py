"""An embedded Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok) run as local processes on loopback, for tests and the local demo."""

from modelfleet.localcluster.cluster import LocalCluster

__all__ = ["LocalCluster"]
