"""Which stage links get a shared-memory payload ring (``shm_ring.py``), how big, and the
handshake over gloo that sets one up.

A link gets a ring when the backend is gloo, ``parallel.transport`` is not ``gloo``, and the
two stages share a host. The launcher's view of the host layout is not enough for the last
point (torchrun's ``LOCAL_WORLD_SIZE`` says whether *all* ranks share a host, and two torchrun
"nodes" may well be one machine), so the handshake proves it link by link: the sender makes the
segment and offers its name and a random nonce over gloo; the receiver maps it, checks the nonce
and answers yes or no. Both then remove the name, so a stage that dies later leaks nothing.
With ``transport=auto`` a link that cannot have a ring keeps the gloo payload path; with
``transport=shm`` that is an error.
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..cost.messages import PART_FIELDS, PLAN_HEADER_INTS, blocks_for, ring_slot_layout
from ..model.arch import ModelArch
from ..scheduler import POLICIES
from .shm_ring import ShmRing, shm_available
from .transport import StageLink

log = logging.getLogger("pp_sarathi")

NAME_INTS = 64  # the offer carries the segment name as one int per character
_OFFER_INTS = 5 + NAME_INTS  # [offered, slots, slot_bytes, nonce, name_len, name...]


def ring_slots(pp: int) -> int:
    """Slots per ring: at most ``pp`` micro-batches are in flight, and the receiver frees a slot
    as soon as it has copied the hop out, so twice that plus two never makes the sender wait."""
    return 2 * pp + 2


# Slots hold this many times the token budget: sarathi_uniform may top a micro-batch up past
# the budget with a prompt's whole remainder (the README job's first micro-batches: 132 tokens
# at chunk 128), and a slot of the default model at chunk 128 is still only ~1 MB.
BUDGET_MARGIN = 2


def slot_bytes(cfg: RunConfig, arch: ModelArch, elem_bytes: int) -> int:
    """A slot holds the largest hop of a token-budgeted micro-batch, with a margin:
    ``BUDGET_MARGIN * max(chunk_size, requests per micro-batch)`` tokens of hidden states and
    the plan metadata of the most requests a micro-batch takes (the cap, plus the parts the
    policy may add past it), each with a full-context block table. Whole-prompt batches beyond
    that (orca, ft, a vllm prompt longer than the budget) take the gloo path."""
    per_batch = (math.ceil(cfg.scheduler.max_batch_size / max(1, cfg.parallel.pp))
                 + POLICIES[cfg.scheduler.name].parts_past_cap)
    tokens = BUDGET_MARGIN * max(cfg.scheduler.chunk_size, per_batch)
    meta = PLAN_HEADER_INTS + per_batch * (PART_FIELDS + blocks_for(arch.max_position_embeddings,
                                                                    cfg.cache.block_size))
    return ring_slot_layout(meta, tokens, arch.hidden_size, elem_bytes)[1]


def connect_rings(link: StageLink, cfg: RunConfig, arch: ModelArch) -> str:
    """Give ``link`` its rings where possible; every rank of the process group calls this once,
    after creating its link. Returns how this rank's outgoing link carries payloads (for logs)."""
    mode = str(cfg.parallel.transport)
    if mode == "gloo" or dist.get_backend() != "gloo" or link.world < 2:
        return "gloo"
    link.ring_timeout_s = cfg.parallel.timeout_s
    if link.prev is not None:  # first answer the previous stage, then offer to the next: a chain
        _accept(link, mode)
    if link.next is None:
        return "-"
    size = slot_bytes(cfg, arch, link.elem_bytes)
    return _offer(link, mode, ring_slots(cfg.parallel.pp), size)


def _offer(link: StageLink, mode: str, slots: int, size: int) -> str:
    offer = torch.zeros(_OFFER_INTS, dtype=torch.long)
    ring, why = None, ""
    if shm_available():
        try:
            ring = ShmRing.create(f"{os.getpid()}-s{link.rank}", slots, size)
        except OSError as exc:
            why = f"cannot make a {slots} x {size} B segment in /dev/shm: {exc}"
    else:
        why = "this host has no writable /dev/shm"
    try:
        if ring is not None:
            name = [ord(c) for c in ring.name]
            offer[:5] = torch.tensor([1, slots, ring.slot_bytes, ring.nonce, len(name)])
            offer[5:5 + len(name)] = torch.tensor(name)
        dist.send(offer, link.next)
        reply = torch.zeros(1, dtype=torch.long)
        if ring is not None:
            dist.recv(reply, link.next)
    finally:
        if ring is not None:
            ring.unlink()  # both ends have it mapped (or never will): the name is no longer needed
    if ring is not None and int(reply[0]) == 1:
        link.ring_out = ring
        return f"shm ({slots} slots x {ring.slot_bytes // 1024} KiB)"
    if ring is not None:
        ring.close()
        why = f"stage {link.next} cannot map this host's shared memory (another host?)"
    if mode == "shm":
        raise RuntimeError(f"parallel.transport=shm: no shared-memory ring from stage {link.rank} to "
                           f"stage {link.next}: {why}")
    log.info("stage %d -> %d: activations over gloo (%s)", link.rank, link.next, why)
    return "gloo"


def _accept(link: StageLink, mode: str) -> None:
    offer = torch.zeros(_OFFER_INTS, dtype=torch.long)
    dist.recv(offer, link.prev)
    offered, slots, size, nonce, name_len = offer[:5].tolist()
    if not offered:
        if mode == "shm":
            raise RuntimeError(f"parallel.transport=shm: stage {link.prev} offered no shared-memory ring")
        return
    name = "".join(chr(c) for c in offer[5:5 + name_len].tolist())
    ring, error = None, None
    try:
        ring = ShmRing.attach(name, nonce, slots, size)
        ring.unlink()
    except (OSError, ValueError) as exc:
        error = exc
    dist.send(torch.tensor([1 if ring is not None else 0], dtype=torch.long), link.prev)
    if ring is not None:
        link.ring_in = ring
    elif mode == "shm":
        raise RuntimeError(f"parallel.transport=shm: stage {link.rank} cannot map stage {link.prev}'s "
                           f"shared memory: {error}")
