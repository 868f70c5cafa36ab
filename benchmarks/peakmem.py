"""Peak resident memory of a stretch of code in this process (Linux): the kernel's
high-water mark VmHWM is reset through /proc/self/clear_refs, then read back. Standard
library only, so that nt_baseline.py (in the neural-tangents environment) can use it too."""

from __future__ import annotations

import resource


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.mib``: peak RSS during the block minus the
    RSS at its start (MiB). Falls back to ru_maxrss growth where /proc is unavailable."""

    def __enter__(self) -> PeakMemory:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.proc = True
        except OSError:
            self.proc = False
        self.start_kib = _status_kib("VmRSS") if self.proc else None
        self.start_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM") if self.proc else None
        if peak is not None and self.start_kib is not None:
            self.mib = (peak - self.start_kib) / 1024
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start_max) / 1024
