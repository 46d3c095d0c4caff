"""Requests for a simulation: the same lengths and arrivals as the real workload, without
materialising prompt token ids (the simulator never runs a model)."""
from __future__ import annotations

from ..config import WorkloadConfig
from ..workload import Request, load_workload
from ..workload.synthetic import synthetic_requests


class PlaceholderTokens:
    """A prompt of ``n`` token ids that are never looked at: supports what the scheduler does
    with a prompt (len, slicing, ``prompt + output_ids``) in O(slice) instead of O(prompt)."""

    __slots__ = ("n", "fill")

    def __init__(self, n: int, fill: int = 0):
        self.n = n
        self.fill = fill

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self.fill] * len(range(*key.indices(self.n)))
        if -self.n <= key < self.n:
            return self.fill
        raise IndexError(key)

    def __iter__(self):
        return iter([self.fill] * self.n)

    def __add__(self, other: list) -> "_Joined":
        return _Joined(self, other)  # used at once by the caller: no copy

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def tolist(self) -> list[int]:
        return [self.fill] * self.n

    def __repr__(self) -> str:
        return f"PlaceholderTokens({self.n})"


class _Joined:
    __slots__ = ("head", "tail")

    def __init__(self, head: PlaceholderTokens, tail: list):
        self.head, self.tail = head, tail

    def __len__(self) -> int:
        return self.head.n + len(self.tail)

    def __getitem__(self, key):
        n = self.head.n
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            lo = [self.head.fill] * max(0, min(stop, n) - start)
            return lo + self.tail[max(0, start - n):max(0, stop - n)]
        if key < 0:
            key += len(self)
        return self.head.fill if key < n else self.tail[key - n]


def sim_requests(cfg: WorkloadConfig, vocab_size: int, eos_token_ids: tuple[int, ...] = (),
                 max_len: int | None = None) -> list[Request]:
    """Synthetic workloads: exactly the lengths and arrivals of
    :func:`pp_sarathi.workload.synthetic.synthetic_requests` for the same seed, with
    placeholder prompts. Files (jsonl, trace) go through :func:`load_workload` unchanged."""
    if cfg.name != "synthetic":
        return load_workload(cfg, vocab_size, eos_token_ids, max_len)
    fill = next(t for t in range(max(1, vocab_size)) if t not in eos_token_ids) if vocab_size else 0
    return synthetic_requests(cfg, vocab_size, eos_token_ids,
                              make_prompt=lambda n: PlaceholderTokens(n, fill))  # type: ignore[arg-type,return-value]
