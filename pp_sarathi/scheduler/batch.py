"""What a scheduler hands to the stages: a batch plan of parts (one micro-batch)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScheduledPart:
    seq_index: int  # request index in the input
    start: int  # position of the first token
    token_ids: list[int]
    block_table: list[int]
    is_prefill: bool  # prompt (or recompute) tokens; False for a decode
    sample: bool  # the part ends the known tokens: sample the next one
    output_index: int  # index of the output token this part produces, if it samples

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class BatchPlan:
    id: int
    parts: list[ScheduledPart] = field(default_factory=list)
    scheduled_at: float = 0.0
    # Predicted compute seconds per stage (when the scheduler has a stage-time predictor).
    predicted_stage_s: list[float] | None = None
    # The target stage time the planner aimed at (sarathi_uniform), seconds.
    target_s: float | None = None

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in self.parts)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(p.num_tokens for p in self.parts if p.is_prefill)

    @property
    def num_decode_tokens(self) -> int:
        return sum(p.num_tokens for p in self.parts if not p.is_prefill)

    def cost_shape(self) -> tuple[list[tuple[int, int]], list[int], int]:
        """What a stage-time predictor needs: prefill chunks ``(tokens, cached)``, decode
        contexts (keys each decode attends to, itself included) and the sampled row count."""
        prefills, decodes, sampled = [], [], 0
        for p in self.parts:
            if p.num_tokens == 1:
                decodes.append(p.start + 1)
            else:
                prefills.append((p.num_tokens, p.start))
            sampled += p.sample
        return prefills, decodes, sampled

    @property
    def kind(self) -> str:
        """prefill, decode or hybrid, for plots and traces."""
        pre, dec = self.num_prefill_tokens, self.num_decode_tokens
        return "hybrid" if pre and dec else ("prefill" if pre else "decode")


@dataclass
class SampleResult:
    token_id: int
    logprobs: dict[int, float] | None = None
