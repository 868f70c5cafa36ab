"""Mutation fuzzing of the dataset readers: valid CIFAR-10 batches, ``mnist.pkl.gz``-style
pickles (Python 2 cPickle layout and protocols 2–5) and IDX files, each mutated at random
(bit flips, byte overwrites, truncation, deletion, insertion, duplication), mostly at the
bytes that carry structure (opcodes, lengths, dtype and array states) rather than pixel data.

Every case must end in a return or a ValueError; anything else (another exception, an
"Exception ignored" unraisable error, a warning, a crash of the process) is a failure. Run it
in a subprocess (a segfault kills the process):

    python3 -m tests.fuzz_loaders --cases 5000 --seed 1 [--trace FILE]

``--trace`` keeps the index of the running case in FILE, to find the case of a crash; the
exit status is 0 when every case passed, 1 otherwise (the failures are printed).
"""

from __future__ import annotations

import argparse
import pickle
import pickletools
import random
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from lplr_fast.data.idx import parse_idx
from lplr_fast.data.safe_pickle import load_array_pickle
from lplr_fast.data.sources import parse_cifar_batch, parse_mnist_pickle

from .datafiles import idx_bytes
from .py2pickle import cifar_batch, dumps

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, *b"NKMJbRtu(.)e]}c\x85\x86\x87\x88\x89\x93\x94\x95\x96"]


def _seeds() -> list[tuple[str, bytes, Callable[[bytes], Any]]]:
    """(name, valid bytes, parser) for every format."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    batch = {b"data": images.reshape(2, -1), b"labels": [3, 7], b"batch_label": b"b"}
    pixels = rng.random((3, 784), dtype=np.float32)
    labels = np.array([1, 0, 9], np.int64)
    mnist = ((pixels, labels), (pixels[:1], labels[:1]), (pixels[:2], labels[:2]))

    def cifar(data: bytes) -> Any:
        return parse_cifar_batch(data, "data_batch_1")

    def mnist_parse(data: bytes) -> Any:
        return parse_mnist_pickle(data, "mnist.pkl")

    def raw_bytes(data: bytes) -> Any:
        return load_array_pickle(data, source="x", encoding="bytes")

    def idx(data: bytes) -> Any:
        return parse_idx(data, "train-images-idx3-ubyte")

    seeds = [("cifar-py2", cifar_batch(images, [3, 7]), cifar)]
    seeds += [(f"cifar-p{p}", pickle.dumps(batch, protocol=p), cifar) for p in (2, 3, 4, 5)]
    seeds += [("mnist-py2", dumps(mnist), mnist_parse)]
    seeds += [(f"mnist-p{p}", pickle.dumps(mnist, protocol=p), mnist_parse) for p in (2, 4, 5)]
    seeds += [("tree-p5-bytes", pickle.dumps(batch, protocol=5), raw_bytes)]
    seeds += [
        ("idx-images", idx_bytes(images[:, 0]), idx),
        ("idx-labels", idx_bytes(labels.astype(np.uint8)), idx),
    ]
    return seeds


def _structure(data: bytes) -> list[int]:
    """Byte positions outside long string/bytes payloads (all positions if not a pickle)."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return list(range(len(data)))
    hot: list[int] = []
    for i, (_, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if isinstance(arg, bytes | bytearray | str) and len(arg) > 64:
            end = min(end, pos + 9)  # the opcode and its length field
        hot.extend(range(pos, end))
    return hot or list(range(len(data)))


def mutate(data: bytes, hot: list[int], rnd: random.Random) -> bytes:
    """One random mutation (module docstring)."""
    out = bytearray(data)
    structural = bool(hot) and rnd.random() < 0.8

    def pick() -> int:  # earlier mutations may have shortened the data
        return rnd.choice(hot) % len(out) if structural else rnd.randrange(len(out))

    kind = rnd.randrange(7)
    if kind == 0:
        for _ in range(rnd.randint(1, 3)):
            out[pick()] ^= 1 << rnd.randrange(8)
    elif kind == 1:
        for _ in range(rnd.randint(1, 3)):
            out[pick()] = rnd.randrange(256)
    elif kind == 2:
        out[pick()] = rnd.choice(_INTERESTING)
    elif kind == 3:
        del out[pick() :]
    elif kind == 4:
        i = pick()
        del out[i : i + rnd.randint(1, 8)]
    elif kind == 5:
        i = pick()
        out[i:i] = bytes(rnd.choice(_INTERESTING) for _ in range(rnd.randint(1, 4)))
    else:
        i = pick()
        j = min(len(out), i + rnd.randint(1, 16))
        out[i:i] = out[i:j]
    return bytes(out)


def run(cases: int, seed: int, trace: str | None) -> list[str]:
    """Run ``cases`` mutated inputs; returns the failures (one line each)."""
    seeds = [(name, data, parse, _structure(data)) for name, data, parse in _seeds()]
    for _, data, parse, _ in seeds:
        parse(data)  # every seed is valid
    failures: list[str] = []
    unraisable: list[str] = []
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
    trace_file = open(trace, "w") if trace else None  # noqa: SIM115
    for case in range(cases):
        rnd = random.Random(f"{seed}:{case}")
        name, data, parse, hot = seeds[case % len(seeds)]
        bad = data
        for _ in range(rnd.choice((1, 1, 1, 2, 3))):
            bad = mutate(bad, hot, rnd) if bad else bad
        if trace_file is not None:
            trace_file.seek(0)
            trace_file.write(f"{case} {name} {bad.hex()}\n")
            trace_file.flush()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                parse(bad)
        except ValueError:
            pass
        except BaseException as exc:
            failures.append(f"case {case} ({name}): {type(exc).__name__}: {str(exc)[:200]}")
        if unraisable:
            failures.append(f"case {case} ({name}): unraisable {unraisable[0]}")
            unraisable.clear()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None)
    args = parser.parse_args(argv)
    failures = run(args.cases, args.seed, args.trace)
    for line in failures[:50]:
        print(line)
    print(f"{args.cases} cases, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
