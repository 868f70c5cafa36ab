"""The model fingerprint (lplr_fast.fingerprint) behind store and run-folder identities:
values that change the model's numbers change it; ordinary Python state never breaks it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lplr_fast.fingerprint import model_fingerprint


def _twins() -> tuple[nn.Module, nn.Module]:
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    second.load_state_dict(first.state_dict())
    return first, second


def test_numpy_arrays_count_by_their_bytes():
    first, second = _twins()
    first.table = np.zeros(12000)  # numpy's repr elides the middle of long arrays
    second.table = np.zeros(12000)
    assert model_fingerprint(first) == model_fingerprint(second)
    second.table[6000] = 1.0
    assert model_fingerprint(first) != model_fingerprint(second)


def test_shared_and_cyclic_references_are_visited_once():
    class Vocabulary:
        def __init__(self, n: int) -> None:
            self.entries = [{"id": i, "owner": self, "text": f"t{i}"} for i in range(n)]

    first, second = _twins()
    first.vocab, second.vocab = Vocabulary(20000), Vocabulary(20000)
    assert model_fingerprint(first) == model_fingerprint(second)
    second.vocab.entries[-1]["text"] = "changed"
    assert model_fingerprint(first) != model_fingerprint(second)


def test_temporary_descriptions_do_not_alias():
    def scaled(c: float):
        return lambda h: h * c

    first, second = _twins()
    first.fns = [scaled(2.0), scaled(3.0)]
    second.fns = [scaled(2.0), scaled(4.0)]
    assert model_fingerprint(first) != model_fingerprint(second)


@pytest.mark.parametrize(
    "buffer",
    [
        lambda: torch.zeros(3).to(torch.float8_e4m3fn),
        lambda: torch.full((3,), 1 + 2j, dtype=torch.complex64).conj(),
        lambda: torch.eye(3).to_sparse(),
        lambda: torch.zeros(3, dtype=torch.bfloat16),
    ],
)
def test_unusual_buffers_are_hashed(buffer):
    first, second = _twins()
    first.register_buffer("b", buffer())
    second.register_buffer("b", buffer())
    assert model_fingerprint(first) == model_fingerprint(second)


def test_extra_state_counts():
    class WithExtra(nn.Linear):
        def __init__(self, tag: str) -> None:
            super().__init__(2, 2)
            self.hidden = {"tag": tag}

        def get_extra_state(self):
            return self.hidden

        def set_extra_state(self, state) -> None:
            self.hidden = state

    torch.manual_seed(0)
    first = WithExtra("a")
    torch.manual_seed(0)
    second = WithExtra("b")
    assert model_fingerprint(first) != model_fingerprint(second)
