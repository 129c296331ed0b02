"""Guest-linear and guest-physical accesses of the running guest, as its processor makes them:
the guest's own 4-level paging over guest-physical memory, which EPT (when the VMCS enables it)
maps onto host memory.  Used for VMX instruction operands, event delivery and instruction fetch
of the engine's own decoding; Unicorn does the same translation for ordinary guest code.
"""

from __future__ import annotations

from nestvmx.engine.ept import EPT_EXEC, EPT_READ, EPT_WRITE, EptFault, EptMapping, ept_translate
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.exceptions import Vector, X86Exception
from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.state import CR0_PG, CR4_SMEP, EFER_NXE, CpuState

_P, _RW, _US, _PS, _NX = 1, 2, 4, 1 << 7, 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000
_CR0_WP = 1 << 16


class GuestMemory:
    """Implements hw.paging.LinearMemory for a guest; raises X86Exception(#PF) and EptFault."""

    def __init__(
        self,
        model: CpuModel,
        memory: PhysicalMemory,
        state: CpuState,
        eptp: int | None,
        ept_cache: dict[int, EptMapping] | None = None,
    ) -> None:
        self.model = model
        self.memory = memory
        self.state = state
        self.eptp = eptp
        # Translations of this EPT hierarchy by 4 KiB guest-physical page, kept by the owner for as
        # long as the hierarchy is unchanged (like the processor's EPT TLB, dropped on INVEPT).
        self.ept_cache = ept_cache if ept_cache is not None else {}
        self.last_gpa = 0  # guest-physical address of the last translation (for EPT violations)
        self.touched: set[int] | None = None  # when a set: every guest-physical page accessed, by number

    def gpa_to_hpa(self, gpa: int, access: int) -> int:
        """Guest-physical to host-physical; EptFault with the entry's permissions on a violation."""
        if self.touched is not None:
            self.touched.add(gpa >> 12)
        if self.eptp is None:
            return gpa
        m = self.ept_cache.get(gpa >> 12)
        if m is None:
            m = ept_translate(self.model, self.memory, self.eptp, gpa)
            self.ept_cache[gpa >> 12] = m
        if access & ~m.perms:
            raise EptFault(gpa, misconfig=False, perms=m.perms)
        return m.hpa + (gpa - m.gpa)

    def linear_to_gpa(self, linear: int, write: bool = False, fetch: bool = False) -> int:
        s = self.state
        if not s.cr0 & CR0_PG:
            return linear & 0xFFFF_FFFF
        user = s.cpl == 3
        table = s.cr3 & _ADDR
        writable = user_ok = True
        nx = False
        for level, shift in enumerate((39, 30, 21, 12)):
            entry_gpa = table + ((linear >> shift) & 0x1FF) * 8
            entry = self.memory.read_bus(self.gpa_to_hpa(entry_gpa, EPT_READ), 8)
            if not entry & _P:
                self._page_fault(linear, write, user, fetch, present=False)
            writable &= bool(entry & _RW)
            user_ok &= bool(entry & _US)
            nx |= bool(entry & _NX) and bool(s.efer & EFER_NXE)
            if shift == 12 or (level in (1, 2) and entry & _PS):
                if (write and not writable and (user or s.cr0 & _CR0_WP)) or (user and not user_ok) or (fetch and nx):
                    self._page_fault(linear, write, user, fetch, present=True)
                mask = (1 << shift) - 1
                return (entry & _ADDR & ~mask) | (linear & mask)
            table = entry & _ADDR
        raise AssertionError("unreachable")

    def _page_fault(self, linear: int, write: bool, user: bool, fetch: bool, present: bool) -> None:
        raise X86Exception(Vector.PF, int(present) | int(write) << 1 | int(user) << 2 | self._fetch_bit(fetch), linear)

    def _fetch_bit(self, fetch: bool) -> int:
        """The error code's I/D flag: an instruction fetch, reported only with IA32_EFER.NXE (in
        4-level paging) or CR4.SMEP (SDM Vol. 3A §4.7)."""
        return int(fetch and bool(self.state.efer & EFER_NXE or self.state.cr4 & CR4_SMEP)) << 4

    def _pieces(self, linear: int, size: int, write: bool, fetch: bool = False) -> list[tuple[int, int]]:
        pieces = []
        access = EPT_WRITE if write else (EPT_EXEC if fetch else EPT_READ)
        while size:
            n = min(size, 0x1000 - (linear & 0xFFF))
            gpa = self.linear_to_gpa(linear, write, fetch)
            self.last_gpa = gpa
            pieces.append((self.gpa_to_hpa(gpa, access), n))
            linear += n
            size -= n
        return pieces

    def read(self, linear: int, size: int) -> bytes:
        return b"".join(
            self.memory.read_bus(pa, n).to_bytes(n, "little") for pa, n in self._pieces(linear, size, False)
        )

    def fetch(self, linear: int, size: int) -> bytes:
        """Instruction bytes at a linear address; stops early at a page that cannot be fetched."""
        out = b""
        while len(out) < size:
            n = min(size - len(out), 0x1000 - ((linear + len(out)) & 0xFFF))
            try:
                ((pa, _),) = self._pieces(linear + len(out), n, False, fetch=True)
            except (X86Exception, EptFault):
                break
            out += self.memory.read_bus(pa, n).to_bytes(n, "little")
        return out

    def write(self, linear: int, data: bytes) -> None:
        pos = 0
        for pa, n in self._pieces(linear, len(data), True):
            self.memory.write_bus(pa, n, int.from_bytes(data[pos : pos + n], "little"))
            pos += n
