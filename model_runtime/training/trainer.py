"""The training loop: AdamW, warmup + decay, gradient accumulation, DDP, checkpoints, progress, output.

Determinism: weights are initialised from the seed, the batch of each step is a function of
(seed, step), and a checkpoint holds everything else (weights, optimizer, scheduler, RNG states), so a
restarted run continues bit for bit on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from model_runtime.files import write_atomic
from model_runtime.training import distributed
from model_runtime.training.batches import BatchPlan, shard
from model_runtime.training.build import build_model
from model_runtime.training.checkpoint import CheckpointStore, capture_rng_state, restore_rng_state
from model_runtime.training.config import TrainerConfig
from model_runtime.training.dataset import prepare_data
from model_runtime.training.distributed import WorkerEnv
from model_runtime.training.exitcodes import ConfigError, NonFiniteLossError, OutputNotWritableError, PreemptedError
from model_runtime.training.metrics import TrainerMetrics, metrics_port
from model_runtime.training.output import prepare_output, save_output
from model_runtime.training.progress import Fanout, Progress, reporters_from_env
from model_runtime.training.schedule import lr_factor

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
ADAM_BETAS = (0.9, 0.95)


def run_worker(config: TrainerConfig, worker: WorkerEnv, env: Mapping[str, str]) -> Progress | None:
    """Train on this process (one rank); returns the final progress report on rank 0."""
    device = distributed.device_for(worker)
    timeout = timedelta(seconds=float(env.get("MODELFLEET_COLLECTIVE_TIMEOUT_SECONDS", 1800)))
    distributed.init_process_group(worker, device, timeout)
    try:
        return Trainer(config, worker, device, env).run()
    finally:
        distributed.destroy()


class Trainer:
    def __init__(self, config: TrainerConfig, worker: WorkerEnv, device: torch.device, env: Mapping[str, str]) -> None:
        self.config = config
        self.worker = worker
        self.device = device
        self.env = env
        self.train_cfg = config.training
        self.micro_batch = config.micro_batch_size(worker.world_size)
        self.store = CheckpointStore(config.checkpoint.dir, config.checkpoint.keep)
        self.reporter = Fanout(reporters_from_env(env) if worker.is_main else [])
        self.metrics = TrainerMetrics()
        self.last_loss: float | None = None
        self.last_val_loss: float | None = None
        self.checkpoint_step: int | None = None
        self.tokens_per_second: float | None = None
        self.stop_requested = False

    # ---- setup -------------------------------------------------------------------------------
    def run(self) -> Progress | None:
        self._seed_everything()
        if self.worker.is_main:
            prepare_output(self.config.output.path)
            self.store.prepare()
        self.data = prepare_data(self.config)
        self.total_steps = self._total_steps(len(self.data.train))
        self.plan = BatchPlan(self.data.train, self.train_cfg.global_batch_size, self.micro_batch, self.train_cfg.seed)
        self.model = build_model(self.config, self.data.tokenizer, self.device)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.fingerprint = self._fingerprint()
        step = self._resume()
        if self.worker.is_main:
            self._truncate_history(step)
            port = metrics_port(self.env)
            if port:
                try:
                    self.metrics.serve(port)
                except OSError as error:  # metrics are not worth failing a run for
                    log.warning("no metrics endpoint: cannot listen on port %d: %s", port, error)
        self.ddp: DistributedDataParallel | None = None
        if self.worker.world_size > 1:
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.net: torch.nn.Module = self.ddp or self.model
        if self.train_cfg.compile:
            self.net = torch.compile(self.net)
        if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
            self._loop(step)
            return self._finish()
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            self._loop(step)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self._finish()

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM: finish the current step, checkpoint it and exit (see _stop_agreed)."""
        self.stop_requested = True

    def _seed_everything(self) -> None:
        seed = self.train_cfg.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)

    def _total_steps(self, n_train: int) -> int:
        if self.train_cfg.steps is not None:
            return self.train_cfg.steps
        return max(1, math.ceil(self.train_cfg.epochs * n_train / self.train_cfg.global_batch_size))

    def _lr_factor(self, step: int) -> float:
        t = self.train_cfg
        return lr_factor(step, warmup=t.warmup_steps, total=self.total_steps, schedule=t.schedule,
                         min_ratio=t.min_learning_rate_ratio)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW; weight decay on matrices and embeddings only (not on norms and biases)."""
        decay, no_decay = [], []
        for param in self.model.parameters():
            (decay if param.dim() >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.train_cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.train_cfg.learning_rate, betas=ADAM_BETAS, eps=1e-8,
                                 fused=self.device.type == "cuda")

    def _fingerprint(self) -> str:
        """What must not change between a checkpoint and the run resuming from it."""
        material = {
            "model": self.model.config.to_dict(),
            "datasetDigest": self.data.dataset_digest,
            "tokenizerDigest": self.data.tokenizer_digest,
            "globalBatchSize": self.train_cfg.global_batch_size,
            "sequenceLength": self.train_cfg.sequence_length,
            "seed": self.train_cfg.seed,
        }
        return "sha256:" + hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()

    # ---- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> int:
        """Load the newest complete checkpoint (read by rank 0, sent to the others); returns the step to start at."""
        payload = None
        if self.worker.is_main:
            latest = self.store.latest()
            if latest is not None:
                state, meta = self.store.load(latest)
                if meta.get("fingerprint") != self.fingerprint:
                    raise ConfigError(
                        f"checkpoint.dir: {self.store.directory} holds checkpoints of a different run (model, data, "
                        "tokenizer, globalBatchSize, sequenceLength or seed changed); use an empty directory"
                    )
                log.info("resuming from %s (step %d)", latest, meta["step"])
                payload = state
        payload = distributed.broadcast_object(payload)
        if payload is None:
            return 0
        state: dict[str, Any] = payload  # type: ignore[assignment]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        restore_rng_state(rng[self.worker.rank] if len(rng) == self.worker.world_size else rng[0])
        step = int(state["step"])
        if int(state["consumedSamples"]) != step * self.train_cfg.global_batch_size:
            raise ConfigError("checkpoint.dir: the checkpoint's data position does not match its step")
        self.last_loss, self.last_val_loss = state.get("loss"), state.get("valLoss")
        self.checkpoint_step = step
        return step

    def _checkpoint(self, step: int) -> None:
        rng = distributed.all_gather_object(capture_rng_state())
        if not self.worker.is_main:
            return
        self._report(step, phase="Checkpointing")
        started = time.perf_counter()
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "step": step,
            "consumedSamples": step * self.train_cfg.global_batch_size,
            "loss": self.last_loss,
            "valLoss": self.last_val_loss,
        }
        path = self.store.save(step, state, {"fingerprint": self.fingerprint, "loss": self.last_loss,
                                             "valLoss": self.last_val_loss, "worldSize": self.worker.world_size})
        self.metrics.checkpoint_duration.observe(time.perf_counter() - started)
        self.checkpoint_step = step
        log.info("wrote checkpoint %s", path)

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self, step: int) -> None:
        cfg, ckpt_every = self.train_cfg, self.config.checkpoint.every
        tokens_per_step = cfg.global_batch_size * cfg.sequence_length
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext())
        interval: list[torch.Tensor] = []
        run_started, interval_started, first_step = time.perf_counter(), time.perf_counter(), step
        while step < self.total_steps:
            lr = self.optimizer.param_groups[0]["lr"]
            interval.append(self._train_step(step, autocast))
            step += 1
            stop = self._stop_agreed()
            last = step == self.total_steps
            log_now = stop or step % cfg.log_every == 0 or last
            eval_now = cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last) and len(self.data.validation) > 0
            ckpt_now = stop or (ckpt_every > 0 and (step % ckpt_every == 0 or last))
            if not (log_now or eval_now or ckpt_now):
                continue
            self.last_loss = self._check_losses(interval, step)
            if eval_now:
                self.last_val_loss = self._evaluate(autocast)
            now = time.perf_counter()
            steps_done = len(interval)
            self.metrics.tokens.inc(steps_done * tokens_per_step)
            self.metrics.step_duration.observe((now - interval_started) / steps_done)
            self.tokens_per_second = steps_done * tokens_per_step / max(now - interval_started, 1e-9)
            eta = (now - run_started) / (step - first_step) * (self.total_steps - step)
            self._record(step, lr, eval_now)
            self._report(step, learning_rate=lr, eta_seconds=eta)
            interval, interval_started = [], time.perf_counter()
            if ckpt_now:
                self._checkpoint(step)
            if stop:
                raise PreemptedError(f"stopped by SIGTERM after checkpointing step {step}; a restart resumes from it")

    def _stop_agreed(self) -> bool:
        """True on every rank once any rank got SIGTERM, so all ranks checkpoint the same step together."""
        if self.worker.world_size == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _train_step(self, step: int, autocast: Any) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns this rank's mean loss (not synced)."""
        micro_batches = self.plan.micro_batches(step, self.worker.rank, self.worker.world_size)
        loss_sum = torch.zeros((), device=self.device)
        for i, indices in enumerate(micro_batches):
            batch = self.data.sequences.batch(indices).to(self.device, non_blocking=True)
            syncing = self.ddp is None or i == len(micro_batches) - 1  # all-reduce on the last micro-batch only
            with nullcontext() if syncing else self.ddp.no_sync():
                with autocast:
                    logits = self.net(batch[:, :-1])
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
                (loss / len(micro_batches)).backward()
            loss_sum += loss.detach()
        if self.train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / len(micro_batches)

    def _check_losses(self, interval: list[torch.Tensor], step: int) -> float:
        """Mean loss over the interval and all ranks; stops (exit 70) if any step's loss is not finite.

        Checked at least at every checkpoint, so a checkpoint never holds weights from after a bad step.
        """
        losses = torch.stack(interval)
        if dist.is_initialized():
            dist.all_reduce(losses)
            losses /= self.worker.world_size
        values = losses.tolist()
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                bad = step - len(values) + offset + 1
                kept = f"; the last good checkpoint is step {self.checkpoint_step}" if self.checkpoint_step else ""
                raise NonFiniteLossError(
                    f"training loss is {value} at step {bad}{kept}. Lower training.learningRate, raise "
                    "training.warmupSteps or set training.gradClip, and check the data"
                )
        return sum(values) / len(values)

    @torch.no_grad()
    def _evaluate(self, autocast: Any) -> float:
        """Mean token loss over the first evalBatches x microBatchSize x world validation sequences."""
        self.model.eval()
        limit = self.train_cfg.eval_batches * self.micro_batch * self.worker.world_size
        mine = shard(self.data.validation[:limit], self.worker.rank, self.worker.world_size)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for start in range(0, len(mine), self.micro_batch):
            batch = self.data.sequences.batch(mine[start:start + self.micro_batch]).to(self.device)
            with autocast:
                logits = self.model(batch[:, :-1])
            totals[0] += F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").double()
            totals[1] += batch[:, 1:].numel()
        if dist.is_initialized():
            dist.all_reduce(totals)
        self.model.train()
        return float(totals[0] / totals[1])

    # ---- reporting and output ----------------------------------------------------------------
    def _report(self, step: int, *, phase: str = "Training", final: bool = False, output: dict[str, str] | None = None,
                learning_rate: float | None = None, eta_seconds: float | None = None) -> Progress:
        progress = Progress(
            step=step, total_steps=self.total_steps, phase=phase, loss=self.last_loss, val_loss=self.last_val_loss,
            learning_rate=learning_rate if learning_rate is not None else self.optimizer.param_groups[0]["lr"],
            tokens_per_second=self.tokens_per_second, eta_seconds=eta_seconds, checkpoint_step=self.checkpoint_step,
            output=output,
        )
        if self.worker.is_main:
            self.metrics.observe(progress)
            self.reporter.report(progress, final=final)
        return progress

    def _history_path(self) -> Path:
        return Path(self.config.checkpoint.dir) / HISTORY_FILE

    def _record(self, step: int, lr: float, evaluated: bool) -> None:
        """Append a line to checkpoint.dir/history.jsonl (the run's loss curve, full precision)."""
        if not self.worker.is_main:
            return
        record = {"step": step, "loss": self.last_loss, "learningRate": lr, "tokensPerSecond": self.tokens_per_second}
        if evaluated:
            record["valLoss"] = self.last_val_loss
        path = self._history_path()
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:
            raise OutputNotWritableError(f"checkpoint.dir: cannot append to {path}: {error}") from None

    def _truncate_history(self, step: int) -> None:
        """Keep the records up to the step we resume from (the rest will be recomputed), dropping a line
        torn by a kill mid-write; rewritten atomically."""
        path = self._history_path()
        kept = []
        if path.is_file():
            for line in path.read_text().splitlines():
                if not line:
                    continue
                try:
                    recorded = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: dropping a damaged line (a write was interrupted): %.80r", path, line)
                    continue
                if recorded <= step:
                    kept.append(line + "\n")
        try:
            write_atomic(path, "".join(kept))
        except OSError as error:
            raise OutputNotWritableError(f"checkpoint.dir: cannot write {path}: {error}") from None

    def _finish(self) -> Progress | None:
        if not self.worker.is_main:
            return None
        self._report(self.total_steps, phase="Saving", eta_seconds=0.0)
        base = self.config.base_model.path if self.config.base_model else None
        digest = save_output(self.model, self.data.tokenizer, self.config.output.path, self._manifest(), base_model_dir=base)
        log.info("wrote model %s (%s)", self.config.output.path, digest)
        return self._report(self.total_steps, phase="Succeeded", final=True, eta_seconds=0.0,
                            output={"path": str(self.config.output.path), "digest": digest})

    def _manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = {
            "datasetDigest": self.data.dataset_digest,
            "tokenizerDigest": self.data.tokenizer_digest,
            "hyperparameters": {**self.config.hyperparameters(), "worldSize": self.worker.world_size},
            "finalLoss": self.last_loss,
            "finalValLoss": self.last_val_loss,
            "steps": self.total_steps,
            "tokensTrained": self.total_steps * self.train_cfg.global_batch_size * self.train_cfg.sequence_length,
            "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        source = {key: self.env[var] for key, var in (("trainingJob", "MODELFLEET_JOB_NAME"),
                                                      ("namespace", "MODELFLEET_NAMESPACE")) if self.env.get(var)}
        if source:
            manifest["source"] = source
        if self.config.base_model is not None:
            manifest["baseModel"] = {"path": self.config.base_model.path}
        return manifest
