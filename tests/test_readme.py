"""The README stays true: its config reference matches the code, its Quickstart is two commands."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current() -> None:
    """README's config reference equals what the config dataclasses generate."""
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "scripts/update_readme.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "README.md").read_text()
    assert mod.render(text) == text, "run: python scripts/update_readme.py"


def test_quickstart_is_two_commands() -> None:
    """The Quickstart block holds exactly two commands: run the engine, run the tests."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 2
    assert "python -m engine run" in lines[0]
    assert "pytest" in lines[1]
