"""Fixtures of the chart tests: the locally built helm binary with a private home (no cluster needed)."""

from __future__ import annotations

import pytest

from modelfleet.localcluster.binaries import ensure_binaries
from tests.chart.helm import Helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(ensure_binaries() / "helm", tmp_path_factory.mktemp("helm"))
