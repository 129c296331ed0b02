"""Linear-address access for instruction operands: the processor's own page walk.

Used for VMX instruction memory operands in VMX root operation.  In non-root operation the
execution engine supplies an accessor that also applies EPT.
"""

from __future__ import annotations

from typing import Protocol

from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.memory import BusError, PhysicalMemory
from nestvmx.hw.state import CR0_PG, CpuState

_PTE_P = 1 << 0
_PTE_RW = 1 << 1
_PTE_US = 1 << 2
_PTE_PS = 1 << 7
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_CR0_WP = 1 << 16


class LinearMemory(Protocol):
    def read(self, linear: int, size: int) -> bytes: ...

    def write(self, linear: int, data: bytes) -> None: ...


class PagedMemory:
    """4-level paging (IA-32e) over physical memory, or identity when CR0.PG = 0."""

    def __init__(self, state: CpuState, memory: PhysicalMemory) -> None:
        self.state = state
        self.memory = memory

    def translate(self, linear: int, write: bool) -> int:
        s = self.state
        if not s.cr0 & CR0_PG:
            return linear & 0xFFFF_FFFF
        user = s.cpl == 3
        table = s.cr3 & _ADDR_MASK
        for level, shift in enumerate((39, 30, 21, 12)):
            entry = self.memory.read_bus(table + ((linear >> shift) & 0x1FF) * 8, 8)
            if not entry & _PTE_P:
                self._fault(linear, write, user, present=False)
            if (write and not entry & _PTE_RW and (user or s.cr0 & _CR0_WP)) or (user and not entry & _PTE_US):
                self._fault(linear, write, user, present=True)
            if shift == 12 or (level in (1, 2) and entry & _PTE_PS):
                page_mask = (1 << shift) - 1
                return (entry & _ADDR_MASK & ~page_mask) | (linear & page_mask)
            table = entry & _ADDR_MASK
        raise AssertionError("unreachable")

    def _fault(self, linear: int, write: bool, user: bool, present: bool) -> None:
        self.state.cr2 = linear
        raise X86Exception(Vector.PF, int(present) | int(write) << 1 | int(user) << 2)

    def read(self, linear: int, size: int) -> bytes:
        return b"".join(
            self.memory.read_bus(pa, n).to_bytes(n, "little") for pa, n in self._pieces(linear, size, False)
        )

    def write(self, linear: int, data: bytes) -> None:
        pos = 0
        for pa, n in self._pieces(linear, len(data), True):
            try:
                self.memory.write(pa, data[pos : pos + n])
            except BusError:
                pass  # writes to addresses without memory are dropped, as on a PC bus
            pos += n

    def _pieces(self, linear: int, size: int, write: bool) -> list[tuple[int, int]]:
        pieces = []
        while size:
            n = min(size, 0x1000 - (linear & 0xFFF))
            pieces.append((self.translate(linear, write), n))
            linear += n
            size -= n
        return pieces
