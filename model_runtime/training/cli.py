"""``modelfleet train --config PATH``: validate, then train here (a worker) or launch this node's workers.

Exit codes are in ``model_runtime.training.exitcodes`` (0, 1, 65, 70, 73, 78, 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from model_runtime.training import exitcodes
from model_runtime.training.config import TrainerConfig, load_config
from model_runtime.training.distributed import (
    DEFAULT_MASTER_WAIT_SECONDS,
    DEFAULT_STOP_TIMEOUT_SECONDS,
    LauncherEnv,
    WorkerEnv,
    launch,
    launcher_requested,
    record_exit_code,
)
from model_runtime.training.exitcodes import ConfigError, TrainerError
from model_runtime.training.trainer import run_worker

log = logging.getLogger("model_runtime.training")

CONFIG_ENV = "MODELFLEET_TRAINER_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet train",
        description="Train a Llama-style language model (the program a TrainingJob's pods run).",
        epilog="exit codes: 0 success, 1 retryable failure, 65 data error, 70 non-finite loss, "
               "73 output not writable (a full disk), 78 configuration error, 143 stopped by SIGTERM after a checkpoint. "
               "modelfleet train -f trainingjob.yaml [--claim NAME=DIR]: run a TrainingJob manifest on this machine.",
    )
    parser.add_argument("--config", default=os.environ.get(CONFIG_ENV),
                        help=f"JSON or YAML configuration file (default: ${CONFIG_ENV})")
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (main() may run more than once in one process)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _setup_logging(role: str) -> None:
    root = logging.getLogger("model_runtime")
    if not root.handlers:
        root.addHandler(_StderrHandler())
        root.setLevel(logging.INFO)
    root.handlers[0].setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{role}] %(message)s"))


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    code = _main(argv, env)
    record_exit_code(env, code)
    return code


def _main(argv: Sequence[str] | None, env: Mapping[str, str]) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    _setup_logging(f"node {env.get('PET_NODE_RANK', '0')} launcher" if launcher_requested(env)
                   else f"rank {env.get('RANK', '0')}")
    try:
        if not args.config:
            raise ConfigError(f"--config: give a configuration file (or set {CONFIG_ENV})")
        config = load_config(args.config)
        launcher = LauncherEnv.from_env(env)
        if launcher is not None:
            return _launch(config, launcher, args.config, env)
        return _work(config, WorkerEnv.from_env(env), env)
    except TrainerError as error:
        log.error("%s (exit %d)", error, error.exit_code)
        return error.exit_code
    except Exception:
        log.exception("unexpected failure (exit %d, retryable)", exitcodes.FAILURE)
        return exitcodes.FAILURE


def _launch(config: TrainerConfig, launcher: LauncherEnv, config_path: str, env: Mapping[str, str]) -> int:
    config.check_world_size(launcher.world_size)
    if launcher.nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:
        # As torchrun does: N processes on one node must not each start a thread per core.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launcher.nproc_per_node))
    master_wait = float(env.get("MODELFLEET_MASTER_WAIT_SECONDS", DEFAULT_MASTER_WAIT_SECONDS))
    stop_timeout = float(env.get("MODELFLEET_STOP_TIMEOUT_SECONDS", DEFAULT_STOP_TIMEOUT_SECONDS))
    log.info("launching %d worker(s) on node %d of %d", launcher.nproc_per_node, launcher.node_rank, launcher.nnodes)
    code = launch(launcher, ["-m", "model_runtime.training.cli", "--config", os.path.abspath(config_path)],
                  run_id=env.get("MODELFLEET_JOB_NAME", "modelfleet"), master_wait=master_wait,
                  stop_timeout=stop_timeout)
    if code == exitcodes.PREEMPTED:
        log.info("stopped: every worker checkpointed its current step (exit %d)", code)
    elif code:
        log.error("a worker failed with exit code %d", code)
    return code


def _work(config: TrainerConfig, worker: WorkerEnv, env: Mapping[str, str]) -> int:
    config.check_world_size(worker.world_size)
    run_worker(config, worker, env)
    return exitcodes.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
