"""A ring of fixed-size slots in a shared-memory segment: the payload path of one stage link
between two processes on the same host.

The sender writes hop ``seq`` (plan metadata + hidden states) into slot ``seq % slots`` and
then sends only the fixed header over gloo; the receiver, told ``seq`` by that header, copies
the payload out and bumps the ring's *consumed* counter. Before reusing a slot the sender waits
(short sleeps) until the hop that last used it has been consumed — flow control with no extra
message. The gloo header keeps every other property of the link (ordering, STOP/HEARTBEAT,
receive timeouts, a dead peer noticed) exactly as before.

The segment is a file on ``/dev/shm`` opened and mapped with ``os``/``mmap`` directly, not
``multiprocessing.shared_memory``: that one (Python < 3.13) registers every segment it opens
with a resource tracker process that unlinks or warns about it at exit, while here the sender
must decide when the name goes away (right after the receiver has mapped it, so that a stage
killed later leaks nothing: the memory lives only as long as the mappings); and not
``torch.from_file(shared=True)``, which maps a path but neither creates it exclusively nor
reserves its pages.
``os.posix_fallocate`` reserves the pages when the segment is made, so a full ``/dev/shm``
fails then, cleanly, instead of killing a stage with SIGBUS on its first write.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import secrets
import time

import torch

from ..cost.messages import INT_BYTES, RING_ALIGN, ring_slot_layout

SHM_DIR = "/dev/shm"
MAGIC = 0x70705F7368_6D3031  # "pp_shm01"
# Control page: [magic, nonce, slots, slot_bytes] and, on a cache line of its own (written by
# the receiver only), the consumed counter.
CONTROL_BYTES = 4096
_CONSUMED_AT = 2 * RING_ALIGN
SLEEP_MIN_S, SLEEP_MAX_S = 20e-6, 1e-3  # the sender's wait for a slot backs off between these


class RingTimeout(RuntimeError):
    """The receiver did not free a slot within the link's timeout (it is stuck or dead)."""


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class ShmRing:
    """One direction of one link: ``slots`` slots of ``slot_bytes`` bytes each.

    Made by the sender (:meth:`create`), mapped by the receiver (:meth:`attach`); only the
    sender writes slots and only the receiver writes the consumed counter."""

    def __init__(self, name: str, fd: int, slots: int, slot_bytes: int, nonce: int):
        self.name, self.slots, self.slot_bytes, self.nonce = name, slots, slot_bytes, nonce
        self.size = CONTROL_BYTES + slots * slot_bytes
        self.waits = 0  # sends that found their slot still unconsumed and waited
        try:
            self._mm = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)  # the mapping keeps the memory; no descriptor is held
        self._bytes = torch.frombuffer(self._mm, dtype=torch.uint8)
        self._control = [ctypes.c_int64.from_buffer(self._mm, i * INT_BYTES) for i in range(4)]
        self._consumed = ctypes.c_int64.from_buffer(self._mm, _CONSUMED_AT)

    # ---- lifetime ----------------------------------------------------------------------
    @classmethod
    def create(cls, tag: str, slots: int, slot_bytes: int) -> "ShmRing":
        """A new segment ``/dev/shm/pp_sarathi-<tag>-<random>``; raises OSError when it cannot
        be made (no /dev/shm, no space)."""
        slot_bytes = -(-slot_bytes // RING_ALIGN) * RING_ALIGN
        name = f"pp_sarathi-{tag}-{secrets.token_hex(4)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, CONTROL_BYTES + slots * slot_bytes)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        nonce = secrets.randbits(62)
        ring = cls(name, fd, slots, slot_bytes, nonce)
        for field, value in zip(ring._control, (MAGIC, nonce, slots, slot_bytes)):
            field.value = value
        return ring

    @classmethod
    def attach(cls, name: str, nonce: int, slots: int, slot_bytes: int) -> "ShmRing":
        """Map the sender's segment; raises OSError (not there: another host or another
        /dev/shm) or ValueError (a segment that is not this one)."""
        if "/" in name or not name.startswith("pp_sarathi-"):
            raise ValueError(f"not a ring name: {name!r}")
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
        if os.fstat(fd).st_size != CONTROL_BYTES + slots * slot_bytes:
            os.close(fd)
            raise ValueError(f"shared-memory segment {name} has an unexpected size")
        ring = cls(name, fd, slots, slot_bytes, nonce)
        if [c.value for c in ring._control] != [MAGIC, nonce, slots, slot_bytes]:
            ring.close()
            raise ValueError(f"shared-memory segment {name} is not the offered ring")
        return ring

    def unlink(self) -> None:
        """Remove the name (idempotent; both sides call it): mapped memory stays valid and is
        freed when the last mapping goes, however the processes end."""
        try:
            os.unlink(os.path.join(SHM_DIR, self.name))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self._control = []
        self._consumed = None
        self._bytes = None
        try:
            self._mm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            pass

    # ---- sender --------------------------------------------------------------------------
    def fits(self, meta_ints: int, num_tokens: int, hidden_size: int, elem_bytes: int) -> bool:
        return ring_slot_layout(meta_ints, num_tokens, hidden_size, elem_bytes)[1] <= self.slot_bytes

    def wait_free(self, seq: int, timeout_s: float) -> None:
        """Block until hop ``seq``'s slot no longer holds an unconsumed hop."""
        need = seq - self.slots + 1
        if self._consumed.value >= need:
            return
        self.waits += 1
        deadline = time.monotonic() + timeout_s
        pause = SLEEP_MIN_S
        while self._consumed.value < need:
            if time.monotonic() > deadline:
                raise RingTimeout(f"the next stage has not taken hop {need - 1} out of the shared-memory "
                                  f"ring within {timeout_s:.0f} s (consumed {self._consumed.value})")
            time.sleep(pause)
            pause = min(SLEEP_MAX_S, 2 * pause)

    def write(self, seq: int, meta: torch.Tensor, hidden: torch.Tensor) -> None:
        """Copy one hop into its slot (the caller checked :meth:`fits` and :meth:`wait_free`)."""
        meta_view, hidden_view = self._views(seq, meta.numel(), hidden.shape[0], hidden.shape[1], hidden.dtype)
        meta_view.copy_(meta)
        hidden_view.copy_(hidden)

    # ---- receiver ------------------------------------------------------------------------
    def read(self, seq: int, meta_len: int, out: torch.Tensor) -> torch.Tensor:
        """Copy hop ``seq``'s hidden states into ``out`` [num_tokens, hidden] and return its
        plan metadata (a copy); the slot is free again when this returns."""
        meta_view, hidden_view = self._views(seq, meta_len, out.shape[0], out.shape[1], out.dtype)
        meta = meta_view.clone()
        out.copy_(hidden_view)
        self._consumed.value = seq + 1  # in order: every earlier hop was consumed before
        return meta

    @property
    def consumed(self) -> int:
        return self._consumed.value

    def _views(self, seq: int, meta_ints: int, num_tokens: int, hidden_size: int, dtype: torch.dtype):
        elem = torch.empty((), dtype=dtype).element_size()
        offset, used = ring_slot_layout(meta_ints, num_tokens, hidden_size, elem)
        if used > self.slot_bytes:
            raise ValueError(f"hop of {used} B does not fit a {self.slot_bytes} B ring slot")
        base = CONTROL_BYTES + (seq % self.slots) * self.slot_bytes
        meta = self._bytes[base:base + INT_BYTES * meta_ints].view(torch.int64)
        hidden = self._bytes[base + offset:base + used].view(dtype).view(num_tokens, hidden_size)
        return meta, hidden
