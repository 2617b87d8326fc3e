"""Sandbox stage: untrusted Python run in an isolated, limited process (see README, Sandbox).

:class:`Sandbox` runs code (:mod:`engine.sandbox.runner`); :mod:`engine.sandbox.isolation`
decides whether this machine can isolate it at all; :mod:`engine.sandbox.tests` runs a
completion's code against an example's tests (the ``unit_tests`` reward).
"""

from .runner import Limit, Sandbox, SandboxResult

__all__ = ("Limit", "Sandbox", "SandboxResult")
