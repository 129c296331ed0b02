"""The VMX capabilities L0 offers L1 (KVM's nested_vmx_setup_ctls_msrs): what IA32_VMX_* read
as inside L1, limited to what L0 really emulates.  vmcs12 has its own revision id and size,
independent of the host processor."""

from __future__ import annotations

from dataclasses import replace

from nestvmx.arch.controls import ControlKind, EntryCtls, ExitCtls, PinBased, PrimaryCtls, SecondaryCtls
from nestvmx.arch.msr import VMX_BASIC_INOUT_INFO, VMX_BASIC_TRUE_CTLS, VMX_MISC_VMWRITE_ANY_FIELD, Msr
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.kvm.cpuid import CR4_GUEST_VALID
from nestvmx.kvm.vmcs12 import VMCS12_REVISION, VMCS12_SIZE

# Controls whose 1-setting L0 emulates for L1 (besides the default1 bits).
NESTED_PIN = PinBased.EXT_INTR_EXITING | PinBased.NMI_EXITING
NESTED_PRIMARY = (
    PrimaryCtls.HLT_EXITING
    | PrimaryCtls.RDPMC_EXITING
    | PrimaryCtls.RDTSC_EXITING
    | PrimaryCtls.CR3_LOAD_EXITING
    | PrimaryCtls.CR3_STORE_EXITING
    | PrimaryCtls.CR8_LOAD_EXITING
    | PrimaryCtls.CR8_STORE_EXITING
    | PrimaryCtls.UNCOND_IO_EXITING
    | PrimaryCtls.USE_IO_BITMAPS
    | PrimaryCtls.USE_MSR_BITMAPS
    | PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS
)
NESTED_SECONDARY = SecondaryCtls.ENABLE_EPT | SecondaryCtls.ENABLE_VPID | SecondaryCtls.ENABLE_RDTSCP
NESTED_EXIT = (
    ExitCtls.HOST_ADDR_SPACE_SIZE
    | ExitCtls.ACK_INTR_ON_EXIT
    | ExitCtls.SAVE_PAT
    | ExitCtls.LOAD_PAT
    | ExitCtls.SAVE_EFER
    | ExitCtls.LOAD_EFER
)
NESTED_ENTRY = EntryCtls.IA32E_MODE_GUEST | EntryCtls.LOAD_PAT | EntryCtls.LOAD_EFER
# EPT/VPID capabilities: execute-only, 4-level walks, UC/WB, 2 MiB and 1 GiB pages, INVEPT
# single/all-context, INVVPID individual/single/all/single-retaining-globals.
NESTED_EPT_VPID = (
    (1 << 0)
    | (1 << 6)
    | (1 << 8)
    | (1 << 14)
    | (1 << 16)
    | (1 << 17)
    | (1 << 20)
    | (1 << 25)
    | (1 << 26)
    | (1 << 32)
    | (1 << 40)
    | (1 << 41)
    | (1 << 42)
    | (1 << 43)
)
_CONTROL_MSRS = {
    ControlKind.PIN: (Msr.IA32_VMX_PINBASED_CTLS, Msr.IA32_VMX_TRUE_PINBASED_CTLS, NESTED_PIN),
    ControlKind.PRIMARY: (Msr.IA32_VMX_PROCBASED_CTLS, Msr.IA32_VMX_TRUE_PROCBASED_CTLS, NESTED_PRIMARY),
    ControlKind.EXIT: (Msr.IA32_VMX_EXIT_CTLS, Msr.IA32_VMX_TRUE_EXIT_CTLS, NESTED_EXIT),
    ControlKind.ENTRY: (Msr.IA32_VMX_ENTRY_CTLS, Msr.IA32_VMX_TRUE_ENTRY_CTLS, NESTED_ENTRY),
}


def nested_vmx_msrs(host: CpuModel) -> dict[int, int]:
    """Capability MSRs for L1."""
    m = host.msrs
    msrs = {k: v for k, v in m.items() if Msr.IA32_VMX_BASIC <= k <= Msr.IA32_VMX_VMFUNC}
    # Memory type and feature bits 48-63 of the host, but no dual-monitor SMM treatment (bit 49): L0
    # does not emulate IA32_SMM_MONITOR_CTL (KVM offers neither).
    basic = m[Msr.IA32_VMX_BASIC] & ~0x1FFF_FFFF_FFFF & ~(1 << 49)
    msrs[Msr.IA32_VMX_BASIC] = basic | VMX_BASIC_TRUE_CTLS | VMX_BASIC_INOUT_INFO | VMCS12_SIZE << 32 | VMCS12_REVISION
    for plain, true, supported in _CONTROL_MSRS.values():
        # The TRUE MSR relaxes must-be-one bits but allows the same 1-settings (SDM A.3.1): the
        # default1 bits (e.g. "save debug controls") stay allowed (KVM's *_ALWAYSON_WITHOUT_TRUE_MSR).
        allowed1 = (m[plain] >> 32) & (supported | m[plain] & 0xFFFF_FFFF)
        for index in (plain, true):
            msrs[index] = allowed1 << 32 | m[index] & 0xFFFF_FFFF
    msrs[Msr.IA32_VMX_PROCBASED_CTLS2] = ((m[Msr.IA32_VMX_PROCBASED_CTLS2] >> 32) & NESTED_SECONDARY) << 32
    msrs[Msr.IA32_VMX_EPT_VPID_CAP] = m[Msr.IA32_VMX_EPT_VPID_CAP] & NESTED_EPT_VPID
    # CR4 bits L1 may set in VMX operation: those its CPUID has features for (nested_vmx_cr_fixed1_bits_update).
    msrs[Msr.IA32_VMX_CR4_FIXED1] = m[Msr.IA32_VMX_CR4_FIXED1] & CR4_GUEST_VALID
    # No activity states but active, no preemption timer; VMWRITE to exit fields allowed (KVM); VM
    # exits store EFER.LMA into "IA-32e mode guest" (bit 5) as the host's do (nested_vmx_vmexit does).
    msrs[Msr.IA32_VMX_MISC] = (m[Msr.IA32_VMX_MISC] & (0x01FF_0000 | 1 << 5)) | VMX_MISC_VMWRITE_ANY_FIELD
    msrs.pop(Msr.IA32_VMX_VMFUNC, None)
    return msrs


def nested_model(host: CpuModel) -> CpuModel:
    """The processor L1 sees, as a CpuModel: its fields and VM-entry checks follow from it."""
    nested = replace(host, name=f"{host.name}-nested", msrs=nested_vmx_msrs(host))
    nested.msrs[Msr.IA32_VMX_VMCS_ENUM] = max(f.index for f in nested.fields.values()) << 1
    return nested
