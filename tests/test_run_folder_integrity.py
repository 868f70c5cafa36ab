"""A run folder answers only for its own run: another initial model or other data is refused
(the caller's model untouched), damaged files are detected by their digest and named."""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lplr_fast import Diagnostics, train

ROOT = Path(__file__).resolve().parents[1]


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)).double()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    return x, torch.randn(16, 1, generator=gen, dtype=torch.float64)


def run(model: nn.Module, out: Path | None, steps: int = 10, **kwargs):
    x, y = kwargs.pop("xy", data())
    diag = Diagnostics(every=1, ntk_every=5)
    return train(model, x, y, lr="auto", steps=steps, diagnostics=diag, out_dir=out, **kwargs)


def _stop_at(step_to_stop: int):
    def on_step(step: int) -> None:
        if step == step_to_stop:
            from lplr_fast.training import StopTraining

            raise StopTraining

    return on_step


@pytest.mark.parametrize("interrupted", [False, True])
def test_other_initial_model_is_refused_and_left_untouched(tmp_path, interrupted):
    on_step = _stop_at(7) if interrupted else None
    run(mlp(0), tmp_path, on_step=on_step)
    other = mlp(1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"model_state \(the initial model"):
        run(other, tmp_path)
    after = other.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "folder's weights loaded"
    alone = run(mlp(1), None)
    assert run(mlp(0), tmp_path).history[0]["loss"] != alone.history[0]["loss"]


def test_other_buffers_are_refused(tmp_path):
    model = mlp(0)
    model.register_buffer("scale", torch.ones(3))
    run(model, tmp_path, steps=3)
    changed = mlp(0)
    changed.register_buffer("scale", torch.ones(3))
    changed.scale[1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(ValueError, match="model_state"):
        run(changed, tmp_path, steps=3)


def test_other_python_state_is_refused(tmp_path):
    from lplr_fast.models import MLP

    def ntk_mlp(w_std: float) -> nn.Module:  # "ntk": same weights, w_std only in a float
        torch.manual_seed(0)
        return MLP(4, [16], 1, parameterization="ntk", w_std=w_std).double()

    run(ntk_mlp(1.0), tmp_path, steps=3)
    with pytest.raises(ValueError, match="model_state"):
        run(ntk_mlp(2.0), tmp_path, steps=3)


def test_other_non_persistent_buffers_are_refused(tmp_path):
    def projected(seed: int) -> nn.Module:
        model = mlp(0)
        proj = torch.randn(3, 3, generator=torch.Generator().manual_seed(seed))
        model.register_buffer("proj", proj.double(), persistent=False)
        return model

    run(projected(1), tmp_path, steps=3)
    with pytest.raises(ValueError, match="model_state"):
        run(projected(2), tmp_path, steps=3)
    run(projected(1), tmp_path, steps=3)  # the same model resumes


def test_other_data_is_refused_bitwise(tmp_path):
    x, y = data()
    run(mlp(0), tmp_path, steps=3, xy=(x, y))
    y2 = y.clone()
    y2[3] = torch.nextafter(y2[3], torch.full_like(y2[3], 1e9))  # one ulp
    with pytest.raises(ValueError, match=r"data_fingerprint \(the data"):
        run(mlp(0), tmp_path, steps=3, xy=(x, y2))


SMALL_RUN = """
[data]
dataset = "teacher"
n = 12

[model]
width = 32
seed = {seed}

[train]
lr = "auto"
steps = 12

[diagnostics]
ntk_every = 4
"""


def cli(config: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "lplr_fast.cli",
        "train",
        str(config),
        "--out",
        str(out),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def small_config(folder: Path, seed: int = 0) -> Path:
    path = folder / f"run{seed}.toml"
    path.write_text(SMALL_RUN.format(seed=seed))
    return path


def test_cli_other_model_seed_is_refused(tmp_path):
    out = tmp_path / "out"
    first = cli(small_config(tmp_path, 0), out)
    assert first.returncode == 0, first.stderr
    history = (out / "history.json").read_bytes()
    assert json.loads((out / "config.json").read_text())["model_state"]  # recorded
    refused = cli(small_config(tmp_path, 1), out)
    assert refused.returncode == 2, refused.stderr
    assert "initial model" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "history.json").read_bytes() == history


def _flip_in_largest_tensor(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor payload of a torch.save zip (found
    by its bytes, so any header in front of the zip does not matter)."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x03\x04")
    with zipfile.ZipFile(io.BytesIO(bytes(raw[start:]))) as archive:
        member = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
        payload = archive.read(member)
    offset = raw.find(payload)
    assert offset > 0 and len(payload) > 64
    raw[offset + len(payload) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["checkpoint.pt", "derived.pt"])
def test_flipped_bit_in_a_run_file_is_named_not_used(tmp_path, name):
    full = run(mlp(0), None, steps=12)
    run(mlp(0), tmp_path, steps=12, on_step=_stop_at(8))
    _flip_in_largest_tensor(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name} is damaged: .*sha256.*delete") as info:
        run(mlp(0), tmp_path, steps=12)
    # the advice works: the run restarts and gives the uninterrupted history
    if name == "checkpoint.pt":
        (tmp_path / name).unlink()
    else:
        assert "checkpoint.pt" in str(info.value)
        (tmp_path / "derived.pt").unlink()
        (tmp_path / "checkpoint.pt").unlink()
    again = run(mlp(0), tmp_path, steps=12)
    assert json.dumps(again.history) == json.dumps(full.history)


def _checkpointed_folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    config = small_config(tmp_path)
    done = cli(config, out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize(
    ("name", "damage"),
    [("checkpoint.pt", "half"), ("checkpoint.pt", "empty"), ("derived.pt", "ninety")],
)
def test_cli_truncated_run_file_is_a_clear_error(tmp_path, name, damage):
    out = _checkpointed_folder(tmp_path)
    path = out / name
    raw = path.read_bytes()
    keep = {"half": len(raw) // 2, "empty": 0, "ninety": len(raw) * 9 // 10}[damage]
    path.write_bytes(raw[:keep])
    result = cli(small_config(tmp_path), out)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path} is damaged" in result.stderr and "delete" in result.stderr


def test_cli_folder_in_use_is_a_clear_error(tmp_path):
    out = _checkpointed_folder(tmp_path)
    with open(out / "run.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli(small_config(tmp_path), out)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "in use by another running process" in result.stderr


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        run(mlp(0), tmp_path, steps=3)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.name != "run.lock"}
    assert {"checkpoint.pt", "derived.pt", "history.json", "config.json"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_run_file_of_an_older_version_is_named(tmp_path):
    run(mlp(0), tmp_path, steps=3)
    path = tmp_path / "checkpoint.pt"
    saved = torch.load(io.BytesIO(path.read_bytes().split(b"\n", 2)[2]), weights_only=True)
    torch.save(saved, path)  # as lplr_fast wrote it before digests
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged: written by an older"):
        run(mlp(0), tmp_path, steps=3)


def test_extra_state_a_checkpoint_cannot_reload_is_refused_up_front(tmp_path):
    class Tagged(nn.Linear):
        def get_extra_state(self):
            return object()  # not loadable with weights_only=True

        def set_extra_state(self, state) -> None:
            pass

    torch.manual_seed(0)
    model = nn.Sequential(Tagged(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    refusal = r"get_extra_state\(\) returns a 'object' object.*without out_dir"
    with pytest.raises(ValueError, match=refusal):
        run(model, tmp_path, steps=2)
    assert not (tmp_path / "checkpoint.pt").exists()
    run(model, None, steps=2)  # without a run folder nothing needs reloading
