"""Garbage-collector accounting and experiments for a benchmarked process.

bench.profiling puts this directory on PYTHONPATH. Nothing happens unless one of these is set:

- ``BENCH_GC_STATS=FILE``: every 0.5 s, write the cumulative number and seconds of collections
  per generation to FILE as JSON (and, every 5 s, how many objects the collector tracks).
  py-spy cannot show this time: a collection is charged to whatever frame happened to allocate.
- ``BENCH_GC_TUNE=freeze``, ``disable`` or ``threshold=G0,G1,G2``: on SIGUSR1 (send it once
  start-up is over), ``gc.collect(); gc.freeze()``, ``gc.disable()`` or ``gc.set_threshold(...)``.
  An experiment only: it shows what a change
  in dspy-serve would gain, e.g.

      PYTHONPATH=bench/gcprobe BENCH_GC_TUNE=freeze dspy-serve run ... &  # then, once ready:
      kill -USR1 $!
"""

import gc
import json
import os
import signal
import threading
import time

_PATH = os.environ.get("BENCH_GC_STATS")
_TUNE = os.environ.get("BENCH_GC_TUNE")

if _PATH:
    _totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    _started = [0.0]

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _started[0] = time.perf_counter()
        else:
            entry = _totals[info["generation"]]
            entry[0] += 1
            entry[1] += time.perf_counter() - _started[0]

    def _dump(path: str) -> None:
        tracked = 0
        for tick in range(10**9):
            time.sleep(0.5)
            if tick % 10 == 0:  # listing every object costs a few ms: not every time
                tracked = len(gc.get_objects())
            payload: dict[str, object] = {
                f"gen{g}": {"runs": n, "seconds": s} for g, (n, s) in _totals.items()
            }
            payload.update(tracked_objects=tracked, frozen_objects=gc.get_freeze_count())
            with open(path + ".tmp", "w") as sink:
                json.dump(payload, sink)
            os.replace(path + ".tmp", path)

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_dump, args=(_PATH,), name="bench-gc-probe", daemon=True).start()

if _TUNE in ("freeze", "disable") or (_TUNE or "").startswith("threshold="):

    def _tune(signum: int, frame: object) -> None:
        gc.collect()
        if _TUNE == "freeze":
            gc.freeze()
        elif _TUNE == "disable":
            gc.disable()
        else:
            gc.set_threshold(*(int(n) for n in _TUNE.partition("=")[2].split(",")))

    signal.signal(signal.SIGUSR1, _tune)
