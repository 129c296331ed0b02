"""The VMX capabilities L0 offers L1 (KVM's nested_vmx_setup_ctls_msrs): what IA32_VMX_* read
as inside L1.  vmcs12 has its own revision id, independent of the host processor."""

from __future__ import annotations

from nestvmx.arch.msr import Msr
from nestvmx.hw.cpu_models import CpuModel

VMCS12_REVISION = 0x11E57ED0  # KVM's VMCS12_REVISION (arch/x86/kvm/vmx/vmcs12.h)
VMCS12_SIZE = 0x1000


def nested_vmx_msrs(host: CpuModel) -> dict[int, int]:
    """Capability MSRs for L1: the host's, with vmcs12's revision id and size."""
    msrs = dict(host.msrs)
    basic = host.msrs[Msr.IA32_VMX_BASIC]
    msrs[Msr.IA32_VMX_BASIC] = (basic & ~0x1FFF_FFFF_FFFF) | VMCS12_SIZE << 32 | VMCS12_REVISION
    return msrs
