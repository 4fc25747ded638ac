"""CPU time and resident memory of processes, read from /proc (Linux), no third-party packages."""

from __future__ import annotations

import os
import resource

__all__ = ["cpu_seconds", "rss_mb", "self_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every thread of ``pid`` so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def self_cpu_seconds() -> float:
    """CPU seconds of this process (all threads), from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
