"""Do argument errors raised inside lplr_fast._C reach Python as ValueError / TypeError?

Runs the calls in a fresh process (a crash of the extension kills only that process) and
exits 0 when every call raised the expected Python error, 1 otherwise.

    python3 -m benchmarks.error_probe
"""

from __future__ import annotations

import subprocess
import sys

CALLS = r"""
import torch, lplr_fast
dev = "cuda" if torch.cuda.is_available() else "cpu"
cases = {
    "square_stats on a 2x3 matrix": lambda: torch.ops.lplr.square_stats(
        torch.ones(2, 3, device=dev)),
    "gram with a half tensor": lambda: lplr_fast.gram_accumulate(
        torch.zeros(2, 2, 1, 1, device=dev), torch.ones(2, 3, device=dev).half(),
        torch.ones(2, 1, 3, device=dev)),
    "gram with a bad rank": lambda: lplr_fast.gram_accumulate(
        torch.zeros(2, 2, 1, 1, device=dev), torch.ones(2, 3, device=dev),
        torch.ones(2, 3, device=dev)),
    "cpu symv with mismatched v": lambda: torch.ops.lplr.symv_upper(
        torch.ones(3, 3), torch.ones(4)),
}
for name, fn in cases.items():
    try:
        fn()
        print("NO ERROR:", name)
    except (ValueError, TypeError) as err:
        print(f"ok ({type(err).__name__}) {dev} {name}: {str(err).splitlines()[0][:100]}")
"""


def main() -> int:
    done = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True)
    print(done.stdout.strip() or "(no output)")
    print(f"exit code {done.returncode} (negative: killed by a signal, the extension crashed)")
    if done.returncode != 0:
        print(done.stderr[-1500:])
    return 0 if done.returncode == 0 and "NO ERROR" not in done.stdout else 1


if __name__ == "__main__":
    sys.exit(main())
