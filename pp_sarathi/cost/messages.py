"""Sizes of the messages a micro-batch sends between pipeline stages.

The runtime's transport (``runtime/transport.py``: plan encoding and stage link) lays its
messages out with these constants and the cost model prices them with the same ones, so the
two cannot drift.
Every integer on the wire is an int64.
"""
from __future__ import annotations

INT_BYTES = 8
# Forward hop: a fixed header [plan_id, meta_len, num_tokens, ring_seq], then the plan
# metadata, then the hidden states [num_tokens, hidden_size]. ``ring_seq`` says where the last
# two are: NO_RING = over the same wire as the header (the three messages the cost model
# prices); a sequence number >= 0 = in slot ring_seq % slots of the link's shared-memory ring
# (stages on one host, runtime/shm_ring.py), laid out by ring_slot_layout below.
HOP_HEADER_INTS = 4
NO_RING = -1
RING_ALIGN = 64  # bytes: every ring slot and the hidden states in it start on a cache line
# Plan metadata: [plan_id, num_parts], then per part PART_FIELDS ints and its block table.
PLAN_HEADER_INTS = 2
PART_FIELDS = 7  # seq_index, start, num_tokens, is_prefill, sample, output_index, num_blocks
# Return from the last stage to rank 0: one fixed-size message [plan_id, n, token ids...]
# carrying up to RESULT_INLINE_TOKENS sampled token ids (-1 padded); a micro-batch with more
# parts sends its n token ids as a second message. One message, not a header and a body: each
# gloo message costs the receiving process two thread wake-ups, milliseconds when the core is
# busy computing the next micro-batch (docs/benchmarks.md, shared-memory hops).
RESULT_HEADER_INTS = 2
RESULT_INLINE_TOKENS = 62
RESULT_MESSAGE_INTS = RESULT_HEADER_INTS + RESULT_INLINE_TOKENS


def blocks_for(tokens: int, block_size: int) -> int:
    """KV blocks that hold ``tokens`` tokens (the length of a part's block table)."""
    return -(-tokens // block_size)


def plan_meta_ints(part_ends: list[int], block_size: int) -> int:
    """Ints of a plan's metadata whose parts end at ``part_ends`` (cached + new tokens): each
    part sends its fields and a block table covering its tokens."""
    n = PLAN_HEADER_INTS
    for end in part_ends:
        n += PART_FIELDS + blocks_for(end, block_size)
    return n


def activation_bytes(num_tokens: int, hidden_size: int, elem_bytes: int) -> int:
    """Bytes of the hidden states a stage hands to the next one."""
    return num_tokens * hidden_size * elem_bytes


def hop_message_bytes(meta_ints: int, num_tokens: int, hidden_size: int, elem_bytes: int) -> tuple[int, int, int]:
    """The three messages of one forward hop over the wire: header, plan metadata, hidden states
    (with a shared-memory ring only the header crosses; the cost model prices the wire path)."""
    return (HOP_HEADER_INTS * INT_BYTES, INT_BYTES * meta_ints,
            activation_bytes(num_tokens, hidden_size, elem_bytes))


def ring_slot_layout(meta_ints: int, num_tokens: int, hidden_size: int, elem_bytes: int) -> tuple[int, int]:
    """A ring slot holding one hop: the plan metadata at offset 0, the hidden states at the
    returned offset (64-byte aligned); returns (hidden offset, bytes used)."""
    offset = -(-INT_BYTES * meta_ints // RING_ALIGN) * RING_ALIGN
    return offset, offset + activation_bytes(num_tokens, hidden_size, elem_bytes)


def result_message_bytes(num_parts: int) -> tuple[int, ...]:
    """The messages of the return to rank 0: the fixed one, and the token ids apart when they
    do not fit it."""
    if num_parts <= RESULT_INLINE_TOKENS:
        return (RESULT_MESSAGE_INTS * INT_BYTES,)
    return RESULT_MESSAGE_INTS * INT_BYTES, INT_BYTES * num_parts
