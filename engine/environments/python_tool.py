"""Environment stage: the built-in ``python`` tool, the model's code run in the sandbox.

Example::

    tool = PythonTool(Sandbox(SandboxConfig(wall_seconds=5)))
    await tool({"code": "print(2 ** 10)"})     # "1024\\n"

The result the model reads is the code's stdout, then its stderr under ``[stderr]``, then a
``[exit 1]`` / ``[killed: wall limit]`` line when the run did not end cleanly: a limit the
code hit is the model's to read, like any error of its code. A malformed call (no ``code``
string) raises :class:`~engine.environments.base.ToolError` (returned to the model). A
failure of the sandbox itself (it cannot isolate code here, cannot start) raises
:class:`~engine.errors.SandboxError`: the episode's failure, not the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..sandbox import Sandbox, SandboxResult
from .base import ToolError

__all__ = ("PythonTool", "format_result")


def format_result(result: SandboxResult) -> str:
    """What the model reads of a run: stdout, stderr, and how it ended unless cleanly."""
    parts = [result.stdout] if result.stdout else []
    if result.stderr:
        parts.append(f"[stderr]\n{result.stderr}")
    if not result.ok:
        parts.append(f"[{result.describe()}]")
    return "\n".join(p.rstrip("\n") for p in parts) + "\n" if parts else "[no output]\n"


class PythonTool:
    """The ``python`` tool (the :class:`~engine.environments.base.Tool` protocol).

    Args:
        sandbox: where the code runs (its limits and concurrency bound); default limits when
            None.

    Attributes:
        name: ``"python"``.
        description: shown to the model.
        parameters: the JSON schema of ``{"code": str}``.
    """

    name = "python"
    description = (
        "Run a Python 3 program in a sandbox (no network, limited time and memory) and return "
        "what it prints. State does not persist between calls."
    )
    parameters: Mapping[str, Any] = MappingProxyType(
        {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program to run"}},
            "required": ["code"],
            "additionalProperties": False,
        }
    )

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox or Sandbox()

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Run ``arguments["code"]``; its output as the model reads it.

        Raises:
            ToolError: no ``code`` string in the arguments.
            SandboxError: the sandbox failed (not the code).
        """
        code = arguments.get("code")
        if not isinstance(code, str):
            raise ToolError('the python tool takes {"code": "<program>"}')
        return format_result(await self.sandbox.run(code))
