"""Regenerate the config reference section of README.md from the config dataclasses.

``python scripts/update_readme.py`` rewrites the section; ``--check`` exits 1 when it is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from engine.config.reference import config_reference

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def render(readme: str) -> str:
    """``readme`` with the text between the config-reference markers regenerated."""
    body = config_reference().strip()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{body}\n{END}", readme)


def main() -> int:
    path = Path(__file__).resolve().parent.parent / "README.md"
    text = path.read_text()
    new = render(text)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
