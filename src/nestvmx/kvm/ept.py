"""EPT paging structures that L0 builds in its own memory: EPT01 (L1's memory) and EPT02 (L2's
guest-physical space, EPT12 composed with EPT01, as KVM's shadow EPT MMU does)."""

from __future__ import annotations

from collections.abc import Callable

from nestvmx.hw.memory import PhysicalMemory

EPT_MEMTYPE_WB = 6 << 3  # memory type of a leaf entry (bits 5:3)
EPTP_WB_WALK_4 = 6 | 3 << 3  # EPTP: write-back paging structures (2:0), 4-level walk (5:3)
_LARGE = 1 << 7
_ADDR = 0x000F_FFFF_FFFF_F000


class EptTables:
    """A 4-level EPT hierarchy with leaves of 4 KiB or 2 MiB, in pages from `alloc_page`."""

    def __init__(self, memory: PhysicalMemory, alloc_page: Callable[[], int]) -> None:
        self.memory = memory
        self.alloc_page = alloc_page
        self.root = alloc_page()
        self.pages = [self.root]  # every table page, to give back when the hierarchy is dropped
        self.leaves = 0

    @property
    def eptp(self) -> int:
        return self.root | EPTP_WB_WALK_4

    def _table(self, table: int, index: int) -> int:
        entry = self.memory.read_u(table + 8 * index, 8)
        if entry & 7:
            return entry & _ADDR
        page = self.alloc_page()
        self.pages.append(page)
        self.memory.write_u(table + 8 * index, 8, page | 7)
        return page

    def zap(self) -> list[int]:
        """Unmap everything, keeping the root (and so the EPT pointer); the table pages freed."""
        freed = self.pages[1:]
        self.memory.write(self.root, bytes(0x1000))
        self.pages, self.leaves = [self.root], 0
        return freed

    def map(self, gpa: int, hpa: int, size: int, perms: int) -> None:
        """Map one 4 KiB or 2 MiB page, write-back memory type."""
        table = self.root
        for shift in (39, 30, 21):
            if shift == 21 and size == 1 << 21:
                break
            table = self._table(table, (gpa >> shift) & 0x1FF)
        leaf = hpa | EPT_MEMTYPE_WB | perms | (_LARGE if size == 1 << 21 else 0)
        self.memory.write_u(table + 8 * ((gpa >> (21 if size == 1 << 21 else 12)) & 0x1FF), 8, leaf)
        self.leaves += 1
