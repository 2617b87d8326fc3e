"""Protocols of multi-turn episodes: tools and environments (work in progress).

A tool is a named async callable with a JSON schema for its arguments (OpenAI ``tools``
format); what it returns is the text the model reads as the tool's result. A tool signals a
failure the model should read by raising :class:`ToolError` (any other exception is returned
to the model too, as ``ExceptionName: message``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ("Tool", "ToolError")


class ToolError(Exception):
    """Raised by a tool; its message is returned to the model as the tool's result."""


@runtime_checkable
class Tool(Protocol):
    """A tool the model may call.

    Attributes:
        name: what the model calls it by.
        description: what it does, shown to the model.
        parameters: JSON schema of the arguments object (OpenAI ``tools`` format).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Run the tool on the (already JSON-decoded) arguments; the result text."""
        ...
