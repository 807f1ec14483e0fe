"""Fault injection FOR TESTING ONLY: make a version of the runtime slow or failing on purpose, so that a canary
analysis (docs/modeldeployment.md) can be shown to roll it back. Both switches are off by default.

- ``--fault-latency-ms`` / ``MODELFLEET_FAULT_LATENCY_MS``: every generation request waits this long before it
  reaches the engine, after it arrived, so the wait shows in time-to-first-token and end-to-end latency.
- ``--fault-error-rate`` / ``MODELFLEET_FAULT_ERROR_RATE``: this fraction (0-1) of generation requests is answered
  500 before any work. Deterministic, not random: of the first n requests, floor(n x rate) fail, evenly spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Faults:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    _seen: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"fault_latency_ms must be >= 0, got {self.latency_ms}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"fault_error_rate must be from 0 to 1, got {self.error_rate}")

    def next_fails(self) -> bool:
        """Whether the next generation request is to be failed."""
        if not self.error_rate:
            return False
        self._seen += 1
        return math.floor(self._seen * self.error_rate) > math.floor((self._seen - 1) * self.error_rate)
