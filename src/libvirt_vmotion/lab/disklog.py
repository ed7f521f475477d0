"""Read the guest workload's disk log from an image file: the host-side checker.

Pure: no I/O. Mirrors ``guest/workload.c``: 4 KiB records, 64-bit little-endian
words ``[magic, run id, seq, checksum, body..., seq]``, record ``seq`` in slot
``seq % slots``. Used by the lab tests to verify a disk image from outside the
guest (the source copy left behind by a copied migration).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

RECORD_BYTES: Final = 4096
WORDS: Final = RECORD_BYTES // 8
MAGIC: Final = 0x766D6F2D6469736B  # "vmo-disk"
BODY_MUL: Final = 0x9E3779B97F4A7C15
_MASK: Final = (1 << 64) - 1
_FMT: Final = f"<{WORDS}Q"


def mix64(x: int) -> int:
    """The workload's 64-bit mixer (murmur3 finalizer)."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK
    x ^= x >> 33
    return x


def checksum(words: tuple[int, ...]) -> int:
    """Checksum over words 4.. of a record (as the workload computes it)."""
    h = 0xCBF29CE484222325
    for w in range(4, WORDS):
        h = (mix64(h ^ words[w]) + w) & _MASK
    return h


def build_record(run_id: int, seq: int) -> bytes:
    """The exact bytes the workload writes for ``seq`` (for tests)."""
    seed = mix64(run_id ^ ((seq * BODY_MUL) & _MASK))
    words = [0] * WORDS
    words[0], words[1], words[2] = MAGIC, run_id, seq
    for w in range(4, WORDS - 1):
        words[w] = (seed + w * BODY_MUL) & _MASK
    words[WORDS - 1] = seq
    words[3] = checksum(tuple(words))
    return struct.pack(_FMT, *words)


def record_problem(record: bytes, *, run_id: int, seq: int) -> str:
    """Why ``record`` is not the intact record ``seq`` of run ``run_id`` ("" if it is)."""
    words = struct.unpack(_FMT, record)
    if words[0] != MAGIC:
        return "bad magic (never written or lost)"
    if words[1] != run_id:
        return "other run id (stale)"
    if words[2] != seq:
        return f"seq {words[2]} instead of {seq} (lost or stale)"
    if words[WORDS - 1] != seq:
        return "tail seq differs (torn)"
    if words[3] != checksum(words):
        return "checksum differs (torn or corrupt)"
    return ""


@dataclass(frozen=True, slots=True)
class LogCheck:
    """Result of checking records ``0..acked-1`` of an image."""

    checked: int
    bad: tuple[tuple[int, str], ...]
    """(seq, problem) of each bad record, at most the first 20."""
    bad_count: int


def check_log(image: bytes, *, run_id: int, acked: int) -> LogCheck:
    """Check that every record ``0..acked-1`` is present and intact (no wrap expected).

    Args:
        image: the raw disk image (or its first ``acked`` records).
        run_id: the workload run's id (``disk_run_id`` of its status, hex).
        acked: how many records were acknowledged.

    """
    slots = len(image) // RECORD_BYTES
    if acked > slots:
        msg = f"acked={acked} exceeds the {slots} slots in the image (the log wrapped)"
        raise ValueError(msg)
    bad: list[tuple[int, str]] = []
    count = 0
    for seq in range(acked):
        rec = image[seq * RECORD_BYTES : (seq + 1) * RECORD_BYTES]
        problem = record_problem(rec, run_id=run_id, seq=seq)
        if problem:
            count += 1
            if len(bad) < 20:
                bad.append((seq, problem))
    return LogCheck(checked=acked, bad=tuple(bad), bad_count=count)
