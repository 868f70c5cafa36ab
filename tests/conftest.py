"""Test-suite wiring: the compiled module is mandatory (no silent fallback), float64 default
for references, CUDA tests skipped cleanly without a GPU."""

from __future__ import annotations

import os

os.environ.setdefault("LPLR_REQUIRE_NATIVE", "1")

import pytest
import torch


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("LPLR_REQUIRE_NATIVE") != "1":
        return
    import lplr_fast

    info = lplr_fast.backend_info()  # raises NativeUnavailableError when missing/stale
    if not info["compiled"]:
        raise pytest.UsageError(f"lplr_fast._C is not usable: {info['fallback_reason']}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
