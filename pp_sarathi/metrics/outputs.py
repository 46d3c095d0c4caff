"""outputs.jsonl: one line per input request, in input order."""
from __future__ import annotations

import json
from pathlib import Path

from ..scheduler.sequence import Sequence


def output_record(seq: Sequence, with_logprobs: bool) -> dict:
    rec = {
        "id": seq.request.id,
        "prompt_token_ids": seq.request.prompt_token_ids,
        "output_token_ids": seq.output_token_ids,
        "finish_reason": seq.finish_reason,
    }
    if seq.text is not None:
        rec["text"] = seq.text
    if with_logprobs:
        rec["logprobs"] = [{str(k): v for k, v in lp.items()} for lp in seq.logprobs]
    return rec


def write_outputs(seqs: list[Sequence], path: Path, with_logprobs: bool) -> None:
    with open(path, "w") as f:
        for seq in seqs:
            f.write(json.dumps(output_record(seq, with_logprobs)) + "\n")
