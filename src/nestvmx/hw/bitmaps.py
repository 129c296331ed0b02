"""Where the processor looks up a bit in the I/O and MSR bitmaps (SDM Vol. 3C §25.6.4, §25.6.9)."""

from __future__ import annotations


def io_bitmap_bits(port: int, size: int) -> list[tuple[int, int, int]] | None:
    """(bitmap: 0 = A, 1 = B; byte offset; bit) for each port accessed; None if the range wraps past 0xFFFF
    (which always exits)."""
    if port + size - 1 > 0xFFFF:
        return None
    return [(p >> 15, (p & 0x7FFF) >> 3, p & 7) for p in range(port, port + size)]


def msr_bitmap_bit(index: int, write: bool) -> tuple[int, int] | None:
    """(byte offset in the 4-KiB MSR bitmap, bit) for an MSR access; None outside the two ranges the
    bitmap covers (those accesses always exit)."""
    if index <= 0x1FFF:
        base = 0
    elif 0xC000_0000 <= index <= 0xC000_1FFF:
        base = 0x400
    else:
        return None
    bit = index & 0x1FFF
    return base + (0x800 if write else 0) + (bit >> 3), bit & 7
