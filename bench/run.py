"""Run the benchmark: ``python -m bench.run`` (full, ~18 min) or ``python -m bench.run --quick`` (~4 min).

``python -m bench.run --goals`` measures the goals of issue #16 instead (bench/goals.py, ~10 min).

For each LM latency a fake LM process starts, then every server under test; for each
concurrency level every system is measured in turn (side by side, so the machine's noise hits
them alike); a load generator (or, for the ceiling, the in-process driver) runs in a process of
its own each time. Results go to bench/results/ (timestamped JSON, Markdown and PNG, plus
latest.md); a full run also refreshes the results section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import cache
from bench.plan import FULL, QUICK, Profile, Step
from bench.report import machine_info, write_outputs
from bench.systems import FakeProcess, Server, System, run_driver, start_fake_lm, start_server

__all__ = ["drained", "log", "main", "measure_step"]

RESULTS = Path(__file__).resolve().parent / "results"
STREAM_CHUNK_DELAY = 0.02
STREAM_ANSWER_CHARS = 120  # with the ChatAdapter's field markers: about 40 chunks of 4 characters
_DRAIN_TIMEOUT = 5.0
STREAM_CLIENT = [sys.executable, "-m", "bench.stream"]
STREAM_LOAD_CLIENT = [sys.executable, "-m", "bench.stream_load"]
# Issue #24's setup: 200 ms to the first byte, then 4-character chunks every 5 ms.
STREAM_LOAD_LATENCY, STREAM_LOAD_CHUNK_DELAY = 0.2, 0.005


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Harness:
    def __init__(self, profile: Profile, logs: Path) -> None:
        self.profile = profile
        self.logs = logs
        self.fake: FakeProcess | None = None
        self.servers: dict[str, Server] = {}
        self.records: list[dict[str, Any]] = []

    # --- processes --------------------------------------------------------------------------------
    def _server(self, system: System) -> Server:
        assert self.fake is not None
        if system.key not in self.servers:
            self.servers[system.key] = start_server(system, self.fake.api_base, self.logs)
        return self.servers[system.key]

    def _restart(self, system: System) -> None:
        server = self.servers.pop(system.key, None)
        if server is not None:
            log(f"  {system.key} still has work queued from the last run: restarting it")
            server.stop()
        self._server(system)

    def _stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        if self.fake is not None:
            self.fake.stop()
            self.fake = None

    # --- measuring ---------------------------------------------------------------------------------
    def run(self) -> None:
        steps = self.profile.steps()
        try:
            for latency in sorted({step.latency for step in steps}):
                self.fake = start_fake_lm(self.logs / f"fake-lm-{latency:g}s.log", latency=latency)
                mine = [step for step in steps if step.latency == latency]
                for system in {step.system.key: step.system for step in mine}.values():
                    if system.kind != "ceiling":
                        self._server(system)
                for step in mine:
                    self._measure(step, len(self.records) + 1, len(steps))
                self._stop_all()
        finally:
            self._stop_all()

    def _measure(self, step: Step, index: int, total: int) -> None:
        assert self.fake is not None
        system = step.system
        server = None if system.kind == "ceiling" else self._server(system)
        log(f"[{index}/{total}] {system.key} @ {step.latency:g}s c={step.concurrency}")
        self.records.append(measure_step(step, self.fake, server))
        if not drained(self.fake):
            if server is None:
                raise RuntimeError(f"{system.key}: the fake LM still has requests open after the run")
            self._restart(system)
            if not drained(self.fake):
                raise RuntimeError(f"{system.key}: the fake LM does not go quiet even after a restart")

    def stream(self) -> dict[str, Any]:
        """The streaming figure: one dspy-serve, a fake LM streaming ~40 chunks 20 ms apart."""
        fake = start_fake_lm(
            self.logs / "fake-lm-stream.log",
            latency=0.1,
            chunk_delay=STREAM_CHUNK_DELAY,
            answer_chars=STREAM_ANSWER_CHARS,
        )
        system = System("dspy-serve", "dspy-serve", "predict", "/qa/stream")
        server = None
        try:
            server = start_server(system, fake.api_base, self.logs)
            log(f"streaming: {self.profile.streams} streams, one after another")
            done = subprocess.run(
                [
                    *STREAM_CLIENT,
                    "--url",
                    server.url,
                    "--fake",
                    fake.url,
                    "--count",
                    str(self.profile.streams),
                ],
                capture_output=True,
                text=True,
                timeout=30 * self.profile.streams + 30,
                cwd=Path(__file__).resolve().parent.parent,
            )
            if done.returncode != 0:
                raise RuntimeError(f"streaming: the client failed:\n{done.stderr[-3000:]}")
            result: dict[str, Any] = json.loads(done.stdout)
            result.update(chunk_delay_ms=STREAM_CHUNK_DELAY * 1000, lm_latency_ms=100)
            log(f"    {result}")
        finally:
            if server is not None:
                server.stop()
            fake.stop()
        result["load"] = self.stream_load()
        return result

    def stream_load(self) -> dict[str, Any]:
        """Issue #24's figure: /qa/stream under closed-loop load against the same client reading
        the LM's stream directly, measured before and after the server's window."""
        concurrency, warmup, duration = self.profile.stream_load
        fake = start_fake_lm(
            self.logs / "fake-lm-stream-load.log",
            latency=STREAM_LOAD_LATENCY,
            chunk_delay=STREAM_LOAD_CHUNK_DELAY,
            answer_chars=STREAM_ANSWER_CHARS,
        )
        system = System("dspy-serve", "dspy-serve", "predict", "/qa/stream")
        server = None
        try:
            server = start_server(system, fake.api_base, self.logs)
            log(f"streaming load: raw LM, /qa/stream, raw LM; c={concurrency}, {duration:g} s each")
            window = ["--concurrency", str(concurrency), "--warmup", str(warmup), "--duration", str(duration)]
            done = subprocess.run(
                [*STREAM_LOAD_CLIENT, "--url", server.url, "--fake", fake.url, *window],
                capture_output=True,
                text=True,
                timeout=3 * (warmup + duration) + 120,
                cwd=Path(__file__).resolve().parent.parent,
            )
            if done.returncode != 0:
                raise RuntimeError(f"streaming load: the client failed:\n{done.stderr[-3000:]}")
            result: dict[str, Any] = json.loads(done.stdout)
            result.update(
                lm_latency_ms=STREAM_LOAD_LATENCY * 1000,
                chunk_delay_ms=STREAM_LOAD_CHUNK_DELAY * 1000,
                answer_chars=STREAM_ANSWER_CHARS,
            )
            log(f"    {result}")
            return result
        finally:
            if server is not None:
                server.stop()
            fake.stop()


def drained(fake: FakeProcess) -> bool:
    """Wait until the fake LM has had no request open or started for 0.3 s (bounded)."""
    deadline, last, quiet_since = time.monotonic() + _DRAIN_TIMEOUT, -1, time.monotonic()
    while time.monotonic() < deadline:
        stats = fake.stats()
        started = int(str(stats["requests_started"]))
        if stats["in_flight"] or started != last:
            last, quiet_since = started, time.monotonic()
        elif time.monotonic() - quiet_since >= 0.3:
            return True
        time.sleep(0.1)
    return False


def measure_step(step: Step, fake: FakeProcess, server: Server | None) -> dict[str, Any]:
    """One closed-loop window of ``step``'s system (``server``, or the ceiling when None): a record."""
    system = step.system
    fake.reset()
    window = ["--warmup", str(step.warmup), "--duration", str(step.duration)]
    window += ["--concurrency", str(step.concurrency), "--watch", f"fake={fake.pid}"]
    if server is None:
        engine = system.args[0] if system.args else "auto"
        args = ["-m", "bench.ceiling", "--program", system.program, "--api-base", fake.api_base]
        args += ["--engine", engine, "--model", system.model]
    else:
        args = ["-m", "bench.load", "--url", server.url, "--body", system.body().decode()]
        args += ["--watch", f"server={server.pid}"]
    label = f"{system.key} @ {step.latency:g}s c={step.concurrency}"
    outcome = run_driver([*args, *window], timeout=step.warmup + step.duration + 90, label=label)
    record = _record(step, outcome, fake.stats(), server)
    log(
        f"    {record['throughput']:.1f} req/s  p50 {record['p50_ms']} ms  p99 {record['p99_ms']} ms  "
        f"errors {record['errors']}  server CPU {record['server_cpu_ms_per_req']} ms/req"
    )
    return record


def _per_request_ms(seconds: float | None, completed: int) -> float | None:
    """CPU ms per answered request; None below 5 clock ticks of CPU, too coarse to divide."""
    if seconds is None or seconds < 0.05 or not completed:
        return None
    return round(seconds / completed * 1000, 2)


def _record(step: Step, outcome: dict[str, Any], lm: dict[str, Any], server: Server | None) -> dict[str, Any]:
    system = step.system
    cpu, rss = outcome.pop("cpu_s"), outcome.pop("rss_mb")
    completed = outcome["completed"]
    return {
        "system": system.label,
        "kind": system.kind,
        "program": system.program,
        "note": system.note,
        "command": " ".join(server.command[1:])
        if server
        else f"bench.ceiling {' '.join(system.args)}".strip(),
        "latency_s": step.latency,
        "warmup_s": step.warmup,
        **outcome,
        "server_cpu_s": cpu.get("server"),
        "server_cpu_ms_per_req": _per_request_ms(cpu.get("server"), completed),
        "server_rss_mb": rss.get("server"),
        "fake_cpu_ms_per_req": _per_request_ms(cpu.get("fake"), completed),
        "lm_requests": lm.get("requests_started"),
        "lm_peak_in_flight": lm.get("peak_in_flight"),
        "loadgen_cpu_s": outcome["loadgen_cpu_s"] if system.kind != "ceiling" else None,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--goals" in argv:  # every goal of issue #16, 3 runs each: bench/goals.py has its own options
        from bench import goals

        goals.main([arg for arg in argv if arg != "--goals"])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short windows, fewer levels (~4 min)")
    parser.add_argument("--duration", type=float, help="override every measured window (seconds)")
    parser.add_argument("--no-docs", action="store_true", help="do not refresh docs/benchmarks.md")
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming figure")
    parser.add_argument(
        "--no-cache", action="store_true", help="skip the response cache and coalescing figures"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.duration:
        profile = replace(profile, duration=dict.fromkeys(profile.duration, args.duration))
    logs = Path(tempfile.mkdtemp(prefix="dspy-serve-bench-"))
    log(f"{profile.name} run, about {profile.seconds() / 60:.0f} min; process logs in {logs}")
    machine = machine_info()
    started = time.time()
    harness = Harness(profile, logs)
    harness.run()
    streaming = None if args.no_stream else harness.stream()
    reuse_profile = cache.QUICK if args.quick else cache.FULL
    if args.duration:
        reuse_profile = replace(reuse_profile, duration=args.duration)
    reuse = None if args.no_cache else cache.measure(reuse_profile, logs, log)
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    machine["wall_seconds"] = round(time.time() - started)
    paths = write_outputs(
        args.out,
        profile=profile,
        records=harness.records,
        streaming=streaming,
        machine=machine,
        reuse=reuse,
        update_docs=profile is FULL and not args.no_docs and not args.duration,
    )
    for path in paths:
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
