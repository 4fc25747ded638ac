"""The playground's page weight and first render, in chromium, on loopback.

    python -m bench.playground              # 20 cold loads of each page (~1 min)
    python -m bench.playground --loads 5    # quicker

dspy-serve serves ``bench/programs.py:predict`` as ``qa`` against the fake LM (each in a process
of its own, as in ``bench.run``); Playwright drives Debian's ``chromium`` (offline: nothing but
the server is reachable). For the landing page (``/``) and a program's page (``/playground/qa``):

- **weight**: the bytes of every response the page loads (``page.on("response")``), static assets
  and API calls apart, on one cold load;
- **first render**, over ``--loads`` cold loads (a fresh browser context each: no HTTP cache):
  first contentful paint and DOMContentLoaded (the Performance API), and *ready*, when the page
  shows its data (the landing page's program cards, the program's form) — median, min, max.

Writes ``bench/results/playground-<date>.md`` (and prints it). The issue's targets: under 150 KB,
first render under 200 ms.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.systems import ROOT, System, start_fake_lm, start_server

__all__ = ["PageFigures", "measure", "report"]

RESULTS = ROOT / "bench" / "results"
PLAYGROUND = System("dspy-serve playground", "dspy-serve", "predict", "")
# What each page shows once its data arrived.
PAGES = {"landing": ("/", "#programs .card"), "program": ("/playground/qa", "#workbench:not([hidden])")}
# Runs before the page's own scripts: notes the moment the page shows its data, in the page's own
# clock (polling from here would add Playwright's round trips).
WATCH_READY = """(selector) => {
  new MutationObserver((_, observer) => {
    if (document.querySelector(selector)) {
      window.__ready = performance.now();
      observer.disconnect();
    }
  }).observe(document, { childList: true, subtree: true, attributes: true });
}"""
TIMING = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  return { fcp: fcp ? fcp.startTime : null, dcl: nav.domContentLoadedEventEnd, ready: window.__ready };
}"""


@dataclass
class PageFigures:
    path: str
    responses: list[tuple[str, str, int]] = field(default_factory=list)  # (path, content type, bytes)
    fcp: list[float] = field(default_factory=list)
    dcl: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)

    def weight(self, *, assets: bool) -> int:
        """Bytes of the page and its static files (``assets``), or of its API calls."""
        return sum(size for path, _, size in self.responses if _is_asset(path) == assets)


def _is_asset(path: str) -> bool:
    return path in ("/", "/playground/qa") or path.startswith("/playground/assets/")


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    return binary


def _load(
    browser: Any, base_url: str, path: str, ready: str, figures: PageFigures | None
) -> dict[str, float]:
    """One cold load of ``path`` in a fresh context; its responses go to ``figures`` when given."""
    context = browser.new_context()
    context.add_init_script(f"({WATCH_READY})({json.dumps(ready)})")
    page = context.new_page()
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(base_url) else route.abort()
    )
    if figures is not None:

        def seen(response: Any) -> None:
            body = response.body() if response.status != 204 else b""
            kind = response.headers.get("content-type", "").split(";")[0]
            figures.responses.append((response.url.removeprefix(base_url), kind, len(body)))

        page.on("response", seen)
    page.goto(base_url + path)
    page.wait_for_selector(ready, timeout=20_000)
    page.wait_for_function("window.__ready !== undefined", timeout=20_000)
    timing: dict[str, float] = page.evaluate(TIMING)
    if figures is not None:
        page.wait_for_load_state("networkidle")  # the late API calls (metrics) are weighed too
    context.close()
    return timing


def measure(loads: int = 20) -> dict[str, PageFigures]:
    """Start the fake LM and the server, load each page ``loads`` times cold, stop them."""
    from playwright.sync_api import sync_playwright

    logs = Path(tempfile.mkdtemp(prefix="bench-playground-"))
    fake = start_fake_lm(logs / "fake_lm.log", latency=0.0)
    server = None
    try:
        server = start_server(PLAYGROUND, fake.api_base, logs)
        base_url = server.url
        figures = {name: PageFigures(path) for name, (path, _) in PAGES.items()}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=_chromium(), args=["--no-sandbox", "--proxy-server=127.0.0.1:9"]
            )
            try:
                for name, (path, ready) in PAGES.items():
                    _load(browser, base_url, path, ready, None)  # warm the server, not the browser
                    _load(browser, base_url, path, ready, figures[name])
                    for _ in range(loads):
                        timing = _load(browser, base_url, path, ready, None)
                        figures[name].fcp.append(timing["fcp"])
                        figures[name].dcl.append(timing["dcl"])
                        figures[name].ready.append(timing["ready"])
            finally:
                browser.close()
        return figures
    finally:
        if server is not None:
            server.stop()
        fake.stop()


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def report(figures: dict[str, PageFigures], loads: int) -> str:
    lines = [
        f"# Playground page weight and first render ({datetime.date.today().isoformat()})",
        "",
        f"`python -m bench.playground --loads {loads}`: chromium (headless, Debian's), cold loads (a fresh "
        "context each), dspy-serve serving `bench/programs.py:predict` on loopback.",
        "",
        "| page | assets KB | API KB | first contentful paint ms | DOMContentLoaded ms | ready ms |",
        "|:---|---:|---:|---|---|---|",
    ]
    for name, page in figures.items():
        lines.append(
            f"| {name} (`{page.path}`) | {page.weight(assets=True) / 1024:.1f} "
            f"| {page.weight(assets=False) / 1024:.1f} "
            f"| {_spread(page.fcp)} | {_spread(page.dcl)} | {_spread(page.ready)} |"
        )
    lines += ["", "Each response of one cold load (bytes as the browser received them, decoded):", ""]
    for name, page in figures.items():
        lines += [f"**{name}**", "", "| response | type | bytes |", "|:---|:---|---:|"]
        lines += [f"| `{path}` | {kind} | {size:,} |" for path, kind, size in page.responses]
        lines.append("")
    lines.append(
        "*ready*: when the page shows its data (the landing page's program cards, the program's form), "
        "after its API calls. Times are from the start of navigation: median (min-max)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loads", type=int, default=20, help="cold loads of each page (default 20)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the report")
    args = parser.parse_args(argv)
    text = report(measure(args.loads), args.loads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"playground-{datetime.date.today().isoformat()}.md"
    path.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
