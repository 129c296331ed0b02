"""The CPUID L0 offers its guest (KVM's supported CPUID, reduced to what the model needs):
a coherent Intel identity of the host model that advertises VMX (CPUID.1:ECX bit 5)."""

from __future__ import annotations

from nestvmx.hw.cpu_models import CpuModel

# Family/model/stepping signatures (CPUID.1:EAX) of the modelled parts.
_SIGNATURE = {"haswell": 0x000306C3, "sandybridge": 0x000206A7}
_VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)  # "Genu" (EBX), "ntel" (ECX), "ineI" (EDX)
_LEAF1_ECX = (1 << 0) | (1 << 5) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23)  # SSE3 VMX SSSE3 CX16 ...
_LEAF1_EDX = 0x0789FBFF & ~(1 << 9)  # FPU..SSE2 without the on-chip APIC, which this platform does not have
_EXT1_EDX = (1 << 11) | (1 << 20) | (1 << 29)  # SYSCALL, NX, LM
_LEAF1_HTT = 1 << 28
# CR4 bits and the leaf-1 feature each needs (KVM's __cr4_reserved_bits): VME and PVI (VME), TSD
# (TSC), DE, PSE, PAE, MCE, PGE, OSFXSR (FXSR), OSXMMEXCPT (SSE) in EDX, VMXE (VMX) in ECX; PCE needs none.
_CR4_FEATURES = {
    0: (_LEAF1_EDX, 1),
    1: (_LEAF1_EDX, 1),
    2: (_LEAF1_EDX, 4),
    3: (_LEAF1_EDX, 2),
    4: (_LEAF1_EDX, 3),
    5: (_LEAF1_EDX, 6),
    6: (_LEAF1_EDX, 7),
    7: (_LEAF1_EDX, 13),
    9: (_LEAF1_EDX, 24),
    10: (_LEAF1_EDX, 25),
    13: (_LEAF1_ECX, 5),
}
# The CR4 bits a guest may set: a MOV to CR4 setting any other is #GP(0) (SDM Vol. 2B MOV CR).
CR4_GUEST_VALID = 1 << 8 | sum(1 << cr4_bit for cr4_bit, (word, bit) in _CR4_FEATURES.items() if word >> bit & 1)


def cpuid(model: CpuModel, leaf: int, subleaf: int, apic_id: int = 0, vcpus: int = 1) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) for CPUID with EAX = leaf, ECX = subleaf, on the vCPU whose APIC ID is
    `apic_id` of a VM with `vcpus` vCPUs: one package of single-thread cores, as QEMU's -smp N."""
    if leaf == 0:
        return 0xD, _VENDOR[0], _VENDOR[1], _VENDOR[2]
    if leaf == 1:
        # EBX[23:16]: addressable logical processor IDs in the package (valid with EDX.HTT).
        edx = _LEAF1_EDX | (_LEAF1_HTT if vcpus > 1 else 0)
        return _SIGNATURE.get(model.name, 0x000306C3), apic_id << 24 | vcpus << 16 | 8 << 8, _LEAF1_ECX, edx
    if leaf == 0x8000_0000:
        return 0x8000_0008, 0, 0, 0
    if leaf == 0x8000_0001:
        return 0, 0, 1, _EXT1_EDX
    if leaf == 0x8000_0008:
        return 48 << 8 | model.phys_addr_bits, 0, 0, 0
    if leaf == 0xB:  # extended topology (SDM Vol. 2A CPUID 0BH): SMT level, core level, then invalid
        subleaf &= 0xFF
        if subleaf == 0:
            return 0, 1, 1 << 8, apic_id
        if subleaf == 1:
            return (vcpus - 1).bit_length(), vcpus, 1 | 2 << 8, apic_id
        return 0, 0, subleaf, apic_id
    return 0, 0, 0, 0
