"""The L1 platform of the design's contract: identity-mapped long mode, a GDT and TSS below
0x10000, no IDT, RSP = 0x100000 - 16 (- i × 0x4000 for vCPU i), IA32_FEATURE_CONTROL locked
with VMX enabled."""

from __future__ import annotations

from nestvmx.hw.memory import PhysicalMemory
from nestvmx.hw.state import (
    AR_DB,
    AR_G,
    AR_L,
    AR_P,
    AR_S,
    AR_UNUSABLE,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
    CpuState,
    Seg,
    Segment,
)

PML4 = 0x1000
PDPT = 0x2000
PD_BASE = 0x3000  # one page directory (1 GiB of 2 MiB pages) per PDPT entry, up to 4 GiB
GDT = 0x8000
TSS = 0x9000
INITIAL_RSP = 0x100000 - 16
VCPU_STACK_SIZE = 0x4000
CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR = 0x08, 0x10, 0x18
_CR0_ET = 1 << 4
_GDT_ENTRIES = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)  # null, 64-bit code, data


def build_platform(memory: PhysicalMemory, guest_size: int) -> None:
    """Write the page tables, GDT and TSS into guest memory (guest-physical = offset in `memory`)."""
    gib = max(1, (guest_size + (1 << 30) - 1) >> 30)
    memory.write_u(PML4, 8, PDPT | 3)
    for g in range(gib):
        pd = PD_BASE + g * 0x1000
        memory.write_u(PDPT + 8 * g, 8, pd | 3)
        for i in range(512):
            address = (g << 30) | (i << 21)
            if address < guest_size:
                memory.write_u(pd + 8 * i, 8, address | 0x83)  # present, writable, 2 MiB
    for i, descriptor in enumerate(_GDT_ENTRIES):
        memory.write_u(GDT + 8 * i, 8, descriptor)
    tss_limit = 0x67
    low = tss_limit | (TSS & 0xFFFFFF) << 16 | 0x89 << 40 | ((TSS >> 24) & 0xFF) << 56
    memory.write_u(GDT + TSS_SELECTOR, 8, low)
    memory.write_u(GDT + TSS_SELECTOR + 8, 8, TSS >> 32)


def initial_rsp(vcpu: int) -> int:
    """vCPU i's stack: 16 KiB below vCPU i - 1's."""
    return INITIAL_RSP - vcpu * VCPU_STACK_SIZE


def initial_state(entry: int, rsp: int = INITIAL_RSP) -> CpuState:
    """The vCPU's state at the program's entry."""
    code = Segment(CODE_SELECTOR, 0, 0xFFFF_FFFF, 0xB | AR_S | AR_P | AR_L | AR_G)
    data = Segment(DATA_SELECTOR, 0, 0xFFFF_FFFF, 0x3 | AR_S | AR_P | AR_DB | AR_G)
    segs = [Segment(data.selector, 0, data.limit, data.ar) for _ in range(6)]
    segs[Seg.CS] = code
    segs.append(Segment(0, 0, 0, AR_UNUSABLE))
    segs.append(Segment(TSS_SELECTOR, TSS, 0x67, 0xB | AR_P))
    s = CpuState(
        segs=segs,
        rip=entry,
        cr0=CR0_PE | CR0_NE | CR0_PG | _CR0_ET,
        cr3=PML4,
        cr4=CR4_PAE,
        efer=EFER_LME | EFER_LMA | EFER_NXE,
        gdtr_base=GDT,
        gdtr_limit=TSS_SELECTOR + 15,
        idtr_base=0,
        idtr_limit=0,
    )
    s.rsp = rsp
    return s
