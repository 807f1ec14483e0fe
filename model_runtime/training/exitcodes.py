"""Exit codes of ``modelfleet train`` and the errors that map to them.

The operator treats the codes in ``DO_NOT_RETRY`` as permanent failures: retrying cannot help until a
person fixes the configuration, the data or the output volume. Values follow BSD ``sysexits.h``.
"""

from __future__ import annotations

SUCCESS = 0
FAILURE = 1  # unexpected and retryable (a crash, a lost peer, an unreachable master)
DATA_ERROR = 65  # EX_DATAERR: missing, empty or malformed training data
NONFINITE_LOSS = 70  # EX_SOFTWARE: the loss became NaN or infinite
OUTPUT_NOT_WRITABLE = 73  # EX_CANTCREAT: the output or checkpoint location cannot be written
CONFIG_ERROR = 78  # EX_CONFIG: the configuration is invalid
PREEMPTED = 143  # 128 + SIGTERM: stopped on request after checkpointing; retryable, resumes where it stopped

DO_NOT_RETRY = frozenset({DATA_ERROR, NONFINITE_LOSS, OUTPUT_NOT_WRITABLE, CONFIG_ERROR})


class TrainerError(Exception):
    """An error that ends the trainer with ``exit_code`` and a message saying what to fix."""

    exit_code = FAILURE


class ConfigError(TrainerError):
    exit_code = CONFIG_ERROR


class DataError(TrainerError):
    exit_code = DATA_ERROR


class NonFiniteLossError(TrainerError):
    exit_code = NONFINITE_LOSS


class OutputNotWritableError(TrainerError):
    exit_code = OUTPUT_NOT_WRITABLE


class PreemptedError(TrainerError):
    """SIGTERM (pod eviction, preemption, deletion): the run checkpointed its current step and stopped."""

    exit_code = PREEMPTED
