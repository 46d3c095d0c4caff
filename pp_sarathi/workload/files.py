"""Workloads read from files: JSONL requests and sarathi-serve/Vidur-style trace CSVs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .request import Request
from .synthetic import random_prompt


class WorkloadFileError(ValueError):
    """A workload file is missing or malformed; the message names the file and line."""


def _require(path: str | None, kind: str) -> Path:
    if not path:
        raise WorkloadFileError(f"workload={kind} needs workload.path")
    p = Path(path)
    if not p.is_file():
        raise WorkloadFileError(f"workload file not found: {path}")
    return p


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def jsonl_requests(path: str | None, default_max_tokens: int, tokenize=None) -> list[Request]:
    """``{"id", "prompt_token_ids" | "prompt", "max_tokens"}`` per line; ``tokenize(text)``
    turns a text prompt into ids (it raises ValueError naming what is missing when it cannot)."""
    p = _require(path, "jsonl")
    out: list[Request] = []
    seen: set[str] = set()
    for lineno, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadFileError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise WorkloadFileError(f"{where}: expected a JSON object")
        rid = str(obj.get("id", f"req-{len(out)}"))
        if rid in seen:
            raise WorkloadFileError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        if "prompt_token_ids" in obj:
            ids = obj["prompt_token_ids"]
            if not isinstance(ids, list) or not ids or not all(_is_int(t) and t >= 0 for t in ids):
                raise WorkloadFileError(f"{where}: prompt_token_ids must be a non-empty list of token ids")
        elif "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise WorkloadFileError(f"{where}: prompt must be a non-empty string")
            if tokenize is None:
                raise WorkloadFileError(f"{where}: text prompts need a tokenizer; give prompt_token_ids")
            try:
                ids = tokenize(obj["prompt"])
            except ValueError as exc:  # no tokenizer for this model: say what is missing
                raise WorkloadFileError(f"{where}: {exc}") from None
            if not ids:
                raise WorkloadFileError(f"{where}: prompt encodes to no tokens")
        else:
            raise WorkloadFileError(f"{where}: needs prompt_token_ids or prompt")
        max_tokens = obj.get("max_tokens", default_max_tokens)
        if not _is_int(max_tokens) or max_tokens < 1:
            raise WorkloadFileError(f"{where}: max_tokens must be a positive integer")
        arrived = obj.get("arrived_at", 0.0)
        if not (_is_int(arrived) or isinstance(arrived, float)) or not 0 <= arrived < float("inf"):
            raise WorkloadFileError(f"{where}: arrived_at must be a number of seconds >= 0")
        out.append(Request(id=rid, prompt_token_ids=ids, max_tokens=max_tokens,
                           arrival_time=float(arrived), index=len(out)))
    if not out:
        raise WorkloadFileError(f"{p}: no requests")
    return out


def trace_requests(path: str | None, vocab_size: int, seed: int, avoid: tuple[int, ...] = (),
                   offset: int = 0, limit: int | None = None) -> list[Request]:
    """CSV with ``num_prefill_tokens,num_decode_tokens[,arrived_at]``; prompts are random ids.
    ``offset``, ``limit``: only rows offset .. offset + limit - 1 (of the data rows) are read."""
    p = _require(path, "trace")
    rng = np.random.default_rng(seed)
    out: list[Request] = []
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"num_prefill_tokens", "num_decode_tokens"} <= cols:
            raise WorkloadFileError(f"{p}:1: header must name num_prefill_tokens,num_decode_tokens")
        for k, row in enumerate(reader):
            if k < offset:
                continue
            if limit is not None and len(out) >= limit:
                break
            lineno = reader.line_num  # the file's line (DictReader skips blank lines)
            try:
                prefill = int(row["num_prefill_tokens"])
                decode = int(row["num_decode_tokens"])
                arrived = float(row["arrived_at"]) if row.get("arrived_at") not in (None, "") else 0.0
            except (TypeError, ValueError):
                raise WorkloadFileError(f"{p}:{lineno}: malformed row {row}") from None
            if prefill < 1 or decode < 1 or not 0 <= arrived < float("inf"):
                raise WorkloadFileError(f"{p}:{lineno}: token counts must be >= 1 and arrived_at >= 0")
            out.append(Request(id=f"req-{len(out)}", prompt_token_ids=random_prompt(rng, prefill, vocab_size, avoid),
                               max_tokens=decode, arrival_time=arrived, index=len(out),
                               ignore_eos=True))
    if not out:
        raise WorkloadFileError(f"{p}: no requests")
    return out
