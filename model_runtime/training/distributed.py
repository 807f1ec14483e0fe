"""Distributed setup from the environment the operator (Kubeflow names) or torchrun sets.

Two roles:
- worker: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` are set (by torchrun,
  by our launcher, or by hand) or absent (a single process);
- per-node launcher: torchrun's pod-level ``PET_*`` variables are set and ``LOCAL_RANK`` is not. The
  launcher waits for the master over TCP (node rank > 0), then starts ``PET_NPROC_PER_NODE`` workers
  with torch's elastic launcher and returns the exit code of the worker that failed first. On SIGTERM
  it passes the signal on, waits for the workers to checkpoint and stop, and returns their exit code
  (143), which each worker leaves in ``MODELFLEET_EXIT_STATUS_DIR`` (the agent keeps no record of it).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from model_runtime.training.exitcodes import FAILURE, PREEMPTED, SUCCESS, ConfigError, TrainerError

log = logging.getLogger(__name__)

DEFAULT_MASTER_WAIT_SECONDS = 600.0
DEFAULT_STOP_TIMEOUT_SECONDS = 600.0
EXIT_STATUS_DIR_ENV = "MODELFLEET_EXIT_STATUS_DIR"


class MasterUnreachableError(TrainerError):
    """Retryable (exit 1): the master pod may still be starting."""


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ConfigError(f"{name}: must be set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be an integer; got {raw!r}") from None


@dataclass(frozen=True)
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "WorkerEnv":
        world = _int(env, "WORLD_SIZE", 1)
        rank = _int(env, "RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK/WORLD_SIZE: need 0 <= RANK < WORLD_SIZE; got RANK={rank} WORLD_SIZE={world}")
        return cls(
            rank=rank,
            world_size=world,
            local_rank=_int(env, "LOCAL_RANK", 0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_int(env, "MASTER_PORT", 29500),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class LauncherEnv:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LauncherEnv | None":
        """The launcher's settings when PET_* are set and this is not already a worker (no LOCAL_RANK)."""
        if not launcher_requested(env):
            return None
        launcher = cls(
            nnodes=_int(env, "PET_NNODES"),
            nproc_per_node=_int(env, "PET_NPROC_PER_NODE", 1),
            node_rank=_int(env, "PET_NODE_RANK", 0),
            master_addr=env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_int(env, "PET_MASTER_PORT", 29500),
        )
        if launcher.nnodes < 1 or launcher.nproc_per_node < 1 or not 0 <= launcher.node_rank < launcher.nnodes:
            raise ConfigError(
                f"PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK: inconsistent ({launcher.nnodes}/"
                f"{launcher.nproc_per_node}/{launcher.node_rank})"
            )
        return launcher


def launcher_requested(env: Mapping[str, str]) -> bool:
    """Pod-level torchrun variables are set and this process is not already a worker."""
    return "LOCAL_RANK" not in env and bool(env.get("PET_NNODES"))


def wait_for_master(addr: str, port: int, timeout: float, interval: float = 1.0) -> None:
    """Block until ``addr:port`` accepts a TCP connection (DNS resolving is not enough)."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(5.0, max(0.1, timeout))):
                return
        except OSError as error:
            last_error = error
        if time.monotonic() + interval > deadline:
            raise MasterUnreachableError(
                f"master {addr}:{port} did not accept TCP connections within {timeout:.0f}s "
                f"(last error: {last_error}); is node 0 running?"
            )
        time.sleep(interval)


def launch(launcher: LauncherEnv, worker_argv: Sequence[str], run_id: str, master_wait: float,
           stop_timeout: float = DEFAULT_STOP_TIMEOUT_SECONDS) -> int:
    """Run this node's workers under torch's elastic agent; the first failing worker's exit code, else 0.

    On a signal (SIGTERM) the agent sends it to the workers and waits up to ``stop_timeout`` seconds
    before it kills them; the result is then the code the workers exited with (see exit_code_after_signal).
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if launcher.node_rank > 0:
        log.info("waiting for master %s:%d", launcher.master_addr, launcher.master_port)
        wait_for_master(launcher.master_addr, launcher.master_port, master_wait)
    config = LaunchConfig(
        min_nodes=launcher.nnodes,
        max_nodes=launcher.nnodes,
        nproc_per_node=launcher.nproc_per_node,
        run_id=run_id,
        rdzv_backend="static",
        rdzv_endpoint=f"{launcher.master_addr}:{launcher.master_port}",
        rdzv_configs={"rank": launcher.node_rank, "timeout": int(master_wait)},
        max_restarts=0,  # the operator restarts pods; a restart resumes from the last checkpoint
        monitor_interval=0.2,
        shutdown_timeout=int(stop_timeout),
    )
    with tempfile.TemporaryDirectory(prefix="modelfleet-exit-") as status_dir:
        os.environ[EXIT_STATUS_DIR_ENV] = status_dir  # the workers inherit it
        try:
            elastic_launch(config, sys.executable)(*worker_argv)
        except ChildFailedError as error:
            return root_cause_exit_code([f.exitcode for f in error.failures.values()],
                                         [f.timestamp for f in error.failures.values()])
        except SignalException as error:
            codes = [_read_exit_code(Path(status_dir) / str(rank)) for rank in range(launcher.nproc_per_node)]
            log.warning("got %s; the workers exited with %s", error.sigval.name, codes)
            return exit_code_after_signal(codes)
        finally:
            del os.environ[EXIT_STATUS_DIR_ENV]
    return 0


def record_exit_code(env: Mapping[str, str], code: int) -> None:
    """In a worker of our launcher: leave this process's exit code where the launcher looks after a signal."""
    directory = env.get(EXIT_STATUS_DIR_ENV)
    if directory and "LOCAL_RANK" in env:
        try:
            (Path(directory) / env["LOCAL_RANK"]).write_text(str(code))
        except OSError as error:
            log.warning("cannot record the exit code in %s: %s", directory, error)


def _read_exit_code(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def exit_code_after_signal(codes: list[int | None]) -> int:
    """The launcher's exit code once a signal stopped its workers, from the codes they exited with (None:
    a worker left none, it was killed). 143 only when every worker checkpointed and stopped; a worker's
    own failure (say 70) wins; a worker killed before it could stop makes it a retryable failure."""
    failed = [code for code in codes if code not in (None, SUCCESS, PREEMPTED)]
    if failed:
        return failed[0]
    if None in codes:
        log.error("local worker(s) %s did not stop by themselves (killed after MODELFLEET_STOP_TIMEOUT_SECONDS, "
                  "or signalled before training started)", [rank for rank, code in enumerate(codes) if code is None])
        return FAILURE
    return PREEMPTED if PREEMPTED in codes else SUCCESS


def root_cause_exit_code(codes: list[int], timestamps: list[int]) -> int:
    """The exit code of the worker that failed first. Timestamps have one-second resolution, so among
    workers failing in the same second one that exited by itself wins over one killed by the agent's
    teardown (negative code: killed by signal N, reported as 128 + N like a shell does)."""
    first = min(timestamps)
    candidates = [code for code, ts in zip(codes, timestamps) if ts == first]
    code = next((c for c in candidates if c > 0), candidates[0])
    return code if code > 0 else 128 - code


def device_for(worker: WorkerEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(worker.local_rank)
        return torch.device("cuda", worker.local_rank)
    return torch.device("cpu")


def init_process_group(worker: WorkerEnv, device: torch.device, timeout: timedelta) -> None:
    """gloo on CPU, NCCL on GPU; nothing for a single process."""
    if worker.world_size == 1:
        return
    os.environ.setdefault("MASTER_ADDR", worker.master_addr)
    os.environ.setdefault("MASTER_PORT", str(worker.master_port))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=worker.rank,
        world_size=worker.world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def is_local_leader() -> bool:
    """The first process on this node (it builds node-local caches)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_object(value: object) -> list[object]:
    if not dist.is_initialized():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
