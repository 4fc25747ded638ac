"""What a benchmark run measures: systems, latencies, concurrency levels and durations."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.systems import System

__all__ = ["FULL", "QUICK", "SYSTEMS", "Profile", "Step"]

# --- the systems ---------------------------------------------------------------------------------
CEILING = System("ceiling", "ceiling", "predict", note="await program.acall() in-process, DSPy defaults")
DSPY_SERVE = System("dspy-serve", "dspy-serve", "predict", "/qa/invoke", note="as shipped (defaults)")
NAIVE_ASYNC = System("naive async def", "naive", "predict", "/async", note="FastAPI, sync call in async def")
NAIVE_DEF = System("naive def", "naive", "predict", "/sync", note="FastAPI def route, Starlette threads")
CEILING_2 = System("ceiling", "ceiling", "two_step", note="await program.acall() in-process")
DSPY_SERVE_2 = System("dspy-serve", "dspy-serve", "two_step", "/qa/invoke", note="aforward: event loop")
DSPY_SERVE_2_SYNC = System(
    "dspy-serve sync", "dspy-serve", "two_step_sync", "/qa/invoke", note="forward only: thread pool"
)
CEILING_LITELLM = System(
    "ceiling litellm", "ceiling", "predict", args=("litellm",), note="dspy.LM(engine='litellm')"
)
KNOWN_MODEL = "openai/gpt-4o-mini"  # in DSPy's model catalogue, unlike "openai/fake-model"
CEILING_KNOWN = System(
    f"ceiling [{KNOWN_MODEL}]", "ceiling", "predict", model=KNOWN_MODEL, note="a catalogued model name"
)
DSPY_SERVE_KNOWN = System(
    f"dspy-serve [{KNOWN_MODEL}]",
    "dspy-serve",
    "predict",
    "/qa/invoke",
    model=KNOWN_MODEL,
    note="a catalogued model name",
)
DSPY_SERVE_TIGHT = System(
    "dspy-serve small queue",
    "dspy-serve",
    "predict",
    "/qa/invoke",
    args=("--max-in-flight", "64", "--max-queue", "64"),
    note="--max-in-flight 64 --max-queue 64",
)

PREDICT_SYSTEMS = (CEILING, DSPY_SERVE, NAIVE_ASYNC, NAIVE_DEF)
TWO_STEP_SYSTEMS = (CEILING_2, DSPY_SERVE_2, DSPY_SERVE_2_SYNC)
KNOWN_SYSTEMS = (CEILING_KNOWN, DSPY_SERVE_KNOWN)
SYSTEMS = (*PREDICT_SYSTEMS, *TWO_STEP_SYSTEMS, *KNOWN_SYSTEMS, CEILING_LITELLM, DSPY_SERVE_TIGHT)


@dataclass(frozen=True)
class Step:
    latency: float
    concurrency: int
    system: System
    warmup: float
    duration: float


@dataclass(frozen=True)
class Profile:
    name: str
    warmup: dict[float, float]  # LM latency -> seconds of warm-up before the measured window
    duration: dict[float, float]  # LM latency -> seconds measured
    levels: dict[float, list[int]]  # every Predict system
    two_step_levels: dict[float, list[int]]
    known_model_levels: dict[float, list[int]] = field(default_factory=dict)  # ceiling, dspy-serve
    engine_levels: dict[float, list[int]] = field(default_factory=dict)  # ceiling with LiteLLM
    overload_levels: dict[float, list[int]] = field(default_factory=dict)  # dspy-serve, small queue
    streams: int = 20
    # Issue #24's streaming load: (concurrency, warm-up s, measured s) per window; three windows.
    stream_load: tuple[int, float, float] = (64, 2.0, 12.0)

    def steps(self) -> list[Step]:
        """Latency by latency, level by level, every system side by side at each level."""
        groups = [
            (self.levels, PREDICT_SYSTEMS),
            (self.two_step_levels, TWO_STEP_SYSTEMS),
            (self.known_model_levels, KNOWN_SYSTEMS),
            (self.engine_levels, (CEILING_LITELLM,)),
            (self.overload_levels, (DSPY_SERVE_TIGHT,)),
        ]
        steps = []
        for latency in sorted(self.levels):
            levels = sorted({c for table, _ in groups for c in table.get(latency, [])})
            for concurrency in levels:
                for table, systems in groups:
                    if concurrency in table.get(latency, []):
                        steps += [
                            Step(latency, concurrency, system, self.warmup[latency], self.duration[latency])
                            for system in systems
                        ]
        return steps

    def seconds(self) -> float:
        """A rough estimate of the run's length (measured time plus ~2 s of overhead per step)."""
        _, warmup, duration = self.stream_load
        load = 3 * (warmup + duration) + 10
        return (
            sum(step.warmup + step.duration + 2.0 for step in self.steps()) + 1.5 * self.streams + 30 + load
        )


FULL = Profile(
    name="full",
    warmup={0.1: 2.0, 1.0: 3.0},
    duration={0.1: 8.0, 1.0: 10.0},
    levels={0.1: [1, 8, 32, 128, 512], 1.0: [1, 8, 32, 128, 256, 512]},
    two_step_levels={0.1: [1, 128, 512], 1.0: [1, 128, 256]},
    known_model_levels={0.1: [1, 32, 128, 512], 1.0: [1, 256]},
    engine_levels={0.1: [1, 128]},
    overload_levels={0.1: [512], 1.0: [512]},
    streams=20,
)

QUICK = Profile(
    name="quick",
    warmup={0.1: 1.0, 1.0: 1.5},
    duration={0.1: 3.0, 1.0: 4.0},
    levels={0.1: [1, 32, 128], 1.0: [1, 128, 256]},
    two_step_levels={0.1: [128], 1.0: [128]},
    streams=10,
    stream_load=(64, 1.0, 4.0),
)
