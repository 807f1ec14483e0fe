"""Pure pieces of the local cluster: fake nodes, the pod runner's path mapping, the CLI dispatch."""

import sys

import pytest

from modelfleet.cli import main as cli_main
from modelfleet.localcluster.nodes import fake_nodes
from modelfleet.localcluster.podrunner import _rewrite_paths, host_command, host_environment


def test_fake_nodes_have_gpu_capacity_and_hostname_labels() -> None:
    nodes = {n["metadata"]["name"]: n for n in fake_nodes()}
    assert set(nodes) == {"gpu-node-0", "gpu-node-1", "cpu-node-0"}
    assert nodes["gpu-node-1"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["gpu-node-1"]["metadata"]["labels"]["kubernetes.io/hostname"] == "gpu-node-1"
    assert "nvidia.com/gpu" not in nodes["cpu-node-0"]["status"]["capacity"]
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes.values())


def test_rewrite_paths_maps_container_paths_longest_first() -> None:
    mounts = {"/etc/modelfleet": "/tmp/pod/cfg", "/data": "/home/me/data", "/data/cache": "/tmp/cache", "/same": "/same"}
    text = '{"path": "/data/corpus.txt", "cache": "/data/cache/x", "cfg": "/etc/modelfleet/trainer.json", "other": "/database"}'
    assert _rewrite_paths(text, mounts) == (
        '{"path": "/home/me/data/corpus.txt", "cache": "/tmp/cache/x", "cfg": "/tmp/pod/cfg/trainer.json", "other": "/database"}')
    assert _rewrite_paths("/same/file", mounts) == "/same/file"
    # A host path that lies under another mount's container path is not rewritten a second time.
    assert _rewrite_paths("/models", {"/models": "/tmp/run/model", "/tmp": "/sandbox/tmp"}) == "/tmp/run/model"


def test_cli_rejects_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli_main(["--help"]) == 0
    assert "cluster" in capsys.readouterr().out


def test_host_paths_of_this_python_are_never_mapped() -> None:
    """Regression: with the venv under /tmp and an emptyDir mounted at /tmp, the interpreter's own path and
    the host's PATH were rewritten into the pod's sandbox, and no runtime pod could start."""
    mounts = {"/tmp": "/sandbox/tmp", "/models": "/data/models"}
    command = host_command(["modelfleet", "serve", "--model", "/models"], mounts)
    assert command == [sys.executable, "-m", "modelfleet.cli", "serve", "--model", "/data/models"]
    host = {"PATH": "/tmp/venv/bin:/usr/bin", "HOME": "/root", "SECRET": "x"}
    env = host_environment({"HOME": "/tmp", "MODELFLEET_MODEL": "/models", "PATH": "/container/bin"}, mounts, host)
    assert env == {"PATH": "/tmp/venv/bin:/usr/bin", "HOME": "/sandbox/tmp", "MODELFLEET_MODEL": "/data/models"}


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
