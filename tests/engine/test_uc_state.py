"""The register transfer between a CpuState and Unicorn (uc_state.py over native.c): what an entry
loads comes back at the exit, an entry writes only registers whose value Unicorn does not hold,
and a selector the guest reloaded takes its hidden part from the GDT."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from nestvmx.engine.uc_state import UnicornRegisters, descriptor_segment
from nestvmx.hw.state import AR_UNUSABLE, CpuState, Seg, Segment

PML4, PDPT, PD, GDT = 0x1000, 0x2000, 0x3000, 0x4000
CODE64, DATA, DATA_DPL3 = 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFF3000000FFFF
TSS_LOW = 0x67 | 0x5000 << 16 | 0x8B << 40  # 64-bit TSS at 0x5000, limit 0x67, busy


def _unicorn() -> Uc:
    """Identity-mapped first 2 MiB (one large page) with a GDT: null, code, data, TSS, DPL-3 data."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 2 << 20)
    for address, value in ((PML4, PDPT | 3), (PDPT, PD | 3), (PD, 0x83)):
        uc.mem_write(address, value.to_bytes(8, "little"))
    gdt = (0, CODE64, DATA, TSS_LOW, 0, DATA_DPL3)
    uc.mem_write(GDT, b"".join(d.to_bytes(8, "little") for d in gdt))
    return uc


def _state() -> CpuState:
    s = CpuState(cr3=PML4, gdtr_base=GDT, gdtr_limit=6 * 8 - 1)
    s.segs[Seg.TR] = descriptor_segment(0x18, TSS_LOW)
    return s


def _gdt_segment(uc: Uc):
    """The engine's part at an exit: the segment a reloaded selector takes from the GDT."""

    def segment(selector: int) -> Segment:
        raw = int.from_bytes(uc.mem_read(GDT + (selector & ~7), 8), "little") if selector & ~7 else 0
        return descriptor_segment(selector, raw)

    return segment


u64 = st.integers(0, 2**64 - 1)
canonical = st.one_of(st.integers(0, 2**47 - 1), st.integers(2**64 - 2**47, 2**64 - 1))


@settings(max_examples=40, deadline=None)
@given(
    gpr=st.lists(u64, min_size=16, max_size=16),
    rip=canonical,
    flags=st.integers(0, 0xFFF),
    bases=st.tuples(canonical, canonical, canonical, canonical),
    limits=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    sysenter=st.tuples(st.integers(0, 0xFFFF), canonical, canonical),
)
def test_an_entry_state_comes_back_at_the_exit(gpr, rip, flags, bases, limits, sysenter) -> None:
    uc = _unicorn()
    regs = UnicornRegisters(uc)
    s = _state()
    s.gpr[:], s.rip, s.rflags = gpr, rip, 2 | flags & 0xCD5  # arithmetic flags, DF
    s.segs[Seg.FS].base, s.segs[Seg.GS].base, s.gdtr_base, s.idtr_base = bases[0], bases[1], GDT, bases[2]
    s.gdtr_limit, s.idtr_limit = max(limits[0], 6 * 8 - 1), limits[1]
    s.sysenter_cs, s.sysenter_esp, s.sysenter_eip = sysenter
    regs.load(s)
    back = copy.deepcopy(_state())
    regs.save(back, _gdt_segment(uc))
    for name in ("gpr", "rip", "rflags", "cr0", "cr3", "cr4", "efer", "gdtr_base", "gdtr_limit", "idtr_base"):
        assert getattr(back, name) == getattr(s, name), name
    assert (back.idtr_limit, back.sysenter_cs, back.sysenter_esp, back.sysenter_eip) == (s.idtr_limit, *sysenter)
    assert back.segs == s.segs
    assert (regs.selectors()[Seg.CS], regs.cr3()) == (0x08, PML4)


def test_an_entry_writes_only_what_unicorn_does_not_hold() -> None:
    uc = _unicorn()
    regs = UnicornRegisters(uc)
    assert regs.selectors() == [None] * 6  # nothing transferred yet
    s = _state()
    regs.load(s)
    uc.reg_write(X.UC_X86_REG_RAX, 0x1234)  # behind the cache's back
    s.gpr[1] = 0x5678
    regs.load(s)  # RAX unchanged in `s`: not written again; RCX is
    regs.save(s, _gdt_segment(uc))
    assert (s.gpr[0], s.gpr[1]) == (0x1234, 0x5678)


def test_a_reloaded_selector_takes_its_descriptor_from_the_gdt() -> None:
    uc = _unicorn()
    regs = UnicornRegisters(uc)
    s = _state()
    s.segs[Seg.ES] = Segment(0x10, 0x1000, 0xFFF, 0x93)  # a hidden part unlike the GDT's
    regs.load(s)
    uc.reg_write(X.UC_X86_REG_DS, 0x2B)  # the guest loads DS with the DPL-3 descriptor
    uc.reg_write(X.UC_X86_REG_GS, 0)
    regs.save(s, _gdt_segment(uc))
    assert s.segs[Seg.DS] == descriptor_segment(0x2B, DATA_DPL3)
    assert s.segs[Seg.GS].ar == AR_UNUSABLE
    assert s.segs[Seg.ES] == Segment(0x10, 0x1000, 0xFFF, 0x93)  # not reloaded: kept
    assert s.segs[Seg.TR].ar & 0xF == 0xB  # busy 64-bit TSS


def test_an_entry_that_fails_halfway_leaves_nothing_cached() -> None:
    uc = _unicorn()
    regs = UnicornRegisters(uc)
    s = _state()
    regs.load(s)
    s.cr4 |= 1 << 7  # PGE: cached as written before the bad RIP stops the entry
    s.rip = "not a number"
    with pytest.raises(TypeError):
        regs.load(s)
    s.rip = 0x1000
    regs.load(s)
    assert uc.reg_read(X.UC_X86_REG_CR4) == s.cr4
