"""Write docs/settings.md from ServeSettings, so the reference can never drift from the code.

.venv/bin/python scripts/settings_doc.py        # rewrite docs/settings.md
.venv/bin/python scripts/settings_doc.py --check  # exit 1 if it is out of date (tests do this)
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from dspy_serve.commands.options import _flag
from dspy_serve.settings import ENV_PREFIX, ServeSettings, setting_sections

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "settings.md"

HEAD = """# Settings reference

Every setting is one field of `ServeSettings`, and so also a command-line flag, an environment
variable, a `.env` entry and a key of the TOML file given with `--config`. Precedence, highest
first: flags, environment, `.env`, TOML, defaults. Unknown keys are errors.

This page is generated from the code (`python scripts/settings_doc.py`); a test fails when it
is out of date.
"""


def default_of(name: str) -> str:
    info = ServeSettings.model_fields[name]
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined or value is None or value == []:
        return ""
    return f"`{value}`"


def render() -> str:
    out = [HEAD]
    for section, names in setting_sections().items():
        out.append(f"\n## {section[0].upper()}{section[1:]}\n")
        out.append("| Setting | Flag | Environment | Default | What it does |")
        out.append("|---|---|---|---|---|")
        for name in names:
            info = ServeSettings.model_fields[name]
            flag = _flag(name, info)
            flag = "TARGET ... (positional)" if flag == "positional" else f"`{flag}`"
            description = (info.description or "").replace("|", "\\|")
            out.append(
                f"| `{name}` | {flag} | `{ENV_PREFIX}{name.upper()}` | {default_of(name)} | {description} |"
            )
    return "\n".join(out) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run python scripts/settings_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
