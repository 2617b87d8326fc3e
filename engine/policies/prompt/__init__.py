"""The prompt policy: GRPO over prompt candidates (:mod:`.policy`), the candidates and their
slots (:mod:`.candidates`), how a candidate becomes a request (:mod:`.rendering`), what a
request returns (:mod:`.sampling`) and how candidates grow (:mod:`.growth`)."""

from __future__ import annotations

from ..base import CompletionClient
from .candidates import Candidate, CandidateStatistics, Demo, make_demo_sets
from .growth import parse_instruction, reflection_prompt
from .policy import PromptPolicy
from .rendering import PromptFormat, render_completion, render_messages
from .sampling import PromptSample

__all__ = (
    "Candidate",
    "CandidateStatistics",
    "CompletionClient",
    "Demo",
    "PromptFormat",
    "PromptPolicy",
    "PromptSample",
    "make_demo_sets",
    "parse_instruction",
    "reflection_prompt",
    "render_completion",
    "render_messages",
)
