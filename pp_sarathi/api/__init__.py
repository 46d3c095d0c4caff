"""Python API: ``from pp_sarathi import LLM, SamplingParams`` (see docs/guide.md)."""
from __future__ import annotations

from .llm import LLM
from .params import GenerateResult, RequestOutput, SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "GenerateResult"]
