"""Facts about the machine a number was measured on: memory peaks now; CPU, GPU and library facts
join here from the benchmark (see mgd_rt.bench) so that export, bench and eval report them alike.

Standard library only: the light runtime and every stage may import it.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (since start, or since :func:`reset_peak_rss`)."""
    hwm = status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024.0


__all__ = ["peak_rss_mb", "reset_peak_rss", "status_mb"]
