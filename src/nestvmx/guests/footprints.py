"""L1 footprints: the VMREADs and VMWRITEs a real hypervisor executes to handle one exit of its
guest, by exit reason, as data.  The built-in minivisor replays the chosen footprint on every L2
exit, so nested runs see the VMCS traffic of that hypervisor.

Sources (read in the code, see each entry): Linux arch/x86/kvm/vmx.c, x86.c and kvm_cache_regs.h
at mainline 4668f050787015805a7e8ea29cc4f81d8f07cedb (the last KVM commit before the kvm-87
release of 2009-06-22, the version the Turtles paper ran), arch/x86/kvm/vmx.c and x86.c of Linux
4.10 (the NEVE paper's L1; duzhen16/linux-4.10), and arch/x86/kvm/vmx/vmx.c of Linux 6.16.1.  Only
accesses that reach the VMCS are listed (cached register reads happen once per exit), plus the
MSRs a hypervisor reads on every round (an L0 that intercepts them takes an exit for each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nestvmx.arch.exit_reasons import ExitReason as R
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import Msr


@dataclass(frozen=True)
class Footprint:
    name: str
    description: str
    common_reads: tuple[int, ...]  # on every exit, before the exit reason is known (VM_EXIT_REASON among them)
    reads: dict[R, tuple[int, ...]] = field(default_factory=dict)  # then, per exit reason
    writes: dict[R, tuple[int, ...]] = field(default_factory=dict)  # before the next entry, per exit reason
    msr_reads: tuple[int, ...] = ()  # RDMSRs before every entry, after the writes


_SKIP_2010 = (F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_INTERRUPTIBILITY_INFO)  # skip_emulated_instruction
_ENTRY_2010 = (F.TPR_THRESHOLD, F.GUEST_CR3, F.GUEST_RIP, F.HOST_CR0)  # update_cr8_intercept, vmx_vcpu_run
_HOST_STATE_2010 = (F.HOST_FS_SELECTOR, F.HOST_GS_SELECTOR, F.HOST_FS_BASE, F.HOST_GS_BASE)  # vmx_save_host_state

KVM2010 = Footprint(
    "kvm2010",
    "KVM of the Turtles paper (kvm-87, 2009): L1 with EPT and the in-kernel LAPIC. CPUID = 7 VMREADs + 4 VMWRITEs",
    # vmx_vcpu_run (IDT vectoring), vmx_complete_interrupts (interrupt info, exit reason),
    # vmx_handle_exit (trace_kvm_exit's kvm_rip_read, GUEST_CR3 with EPT and paging on).
    (F.IDT_VECTORING_INFO_FIELD, F.VM_EXIT_INTR_INFO, F.VM_EXIT_REASON, F.GUEST_RIP, F.GUEST_CR3),
    reads={
        R.CPUID: _SKIP_2010,
        R.IO_INSTRUCTION: (F.EXIT_QUALIFICATION, *_SKIP_2010),
        R.RDMSR: _SKIP_2010,  # an MSR of the generic path (kvm_get_msr_common)
        R.WRMSR: _SKIP_2010,
        R.VMCALL: _SKIP_2010,
        R.HLT: _SKIP_2010,
        R.EPT_VIOLATION: (F.EXIT_QUALIFICATION, F.GUEST_PHYSICAL_ADDRESS),  # handle_ept_violation
    },
    writes={
        R.CPUID: _ENTRY_2010,
        R.IO_INSTRUCTION: _ENTRY_2010,
        R.RDMSR: (*_HOST_STATE_2010, *_ENTRY_2010),  # host state reloaded after vmx_load_host_state
        R.WRMSR: (*_HOST_STATE_2010, *_ENTRY_2010),
        R.VMCALL: _ENTRY_2010,
        R.HLT: _ENTRY_2010,
        R.EPT_VIOLATION: (F.TPR_THRESHOLD, F.GUEST_CR3, F.HOST_CR0),  # RIP is not dirty
    },
)

_SKIP_NOW = (F.GUEST_RFLAGS, F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_RIP, F.GUEST_INTERRUPTIBILITY_INFO)  # kvm_skip_...

KVM = Footprint(
    "kvm",
    "Linux 6.16 KVM (vmx.c) as L1, as offered here: no PML, no APICv, no preemption-timer APIC timer",
    (F.VM_EXIT_REASON, F.IDT_VECTORING_INFO_FIELD),  # vmx_vcpu_enter_exit
    reads={
        R.CPUID: _SKIP_NOW,  # kvm_emulate_cpuid: GPRs from the register array
        R.IO_INSTRUCTION: (F.EXIT_QUALIFICATION, *_SKIP_NOW),  # handle_io -> kvm_fast_pio
        R.RDMSR: _SKIP_NOW,  # kvm_emulate_rdmsr of an MSR not held in the VMCS
        R.WRMSR: _SKIP_NOW,
        R.VMCALL: (F.GUEST_SS_AR_BYTES, F.GUEST_CS_AR_BYTES, *_SKIP_NOW),  # vmx_get_cpl, is_64_bit_mode
        R.HLT: _SKIP_NOW,
        R.EPT_VIOLATION: (F.EXIT_QUALIFICATION, F.GUEST_PHYSICAL_ADDRESS),
    },
    writes={r: (F.GUEST_RIP,) for r in (R.CPUID, R.IO_INSTRUCTION, R.RDMSR, R.WRMSR, R.VMCALL, R.HLT)},
)

_SKIP_4_10 = (F.GUEST_RFLAGS, F.GUEST_RIP, F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_INTERRUPTIBILITY_INFO)  # kvm_skip_...

KVM2017 = Footprint(
    "kvm2017",
    "Linux 4.10 KVM as L1, NEVE's (SOSP 2017), as offered here: no APICv (no GUEST_INTR_STATUS read), no PML",
    # vmx_vcpu_run (IDT vectoring, exit reason), vmx_handle_external_intr (run on every exit)
    (F.IDT_VECTORING_INFO_FIELD, F.VM_EXIT_REASON, F.VM_EXIT_INTR_INFO),
    reads={
        # kvm_skip_emulated_instruction: vmx_get_rflags, skip_emulated_instruction (RIP, length),
        # vmx_set_interrupt_shadow; the hypercall then asks is_64_bit_mode and vmx_get_cpl (SS AR).
        R.CPUID: _SKIP_4_10,
        R.IO_INSTRUCTION: (F.EXIT_QUALIFICATION, *_SKIP_4_10),
        R.RDMSR: _SKIP_4_10,  # an MSR of the generic path
        R.WRMSR: _SKIP_4_10,
        R.VMCALL: (*_SKIP_4_10, F.GUEST_CS_AR_BYTES, F.GUEST_SS_AR_BYTES),  # kvm_emulate_hypercall
        R.HLT: _SKIP_4_10,
        R.EPT_VIOLATION: (F.EXIT_QUALIFICATION, F.GUEST_PHYSICAL_ADDRESS),
    },
    writes={r: (F.GUEST_RIP,) for r in (R.CPUID, R.IO_INSTRUCTION, R.RDMSR, R.WRMSR, R.VMCALL, R.HLT)},
    msr_reads=(Msr.IA32_DEBUGCTL,),  # vmx_vcpu_run: debugctlmsr = get_debugctlmsr() before every entry
)

MINIMAL = Footprint(
    "minimal",
    "the least a hypervisor can do: exit reason, and the instruction length and RIP to skip",
    (F.VM_EXIT_REASON,),
    reads={
        **{r: (F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_RIP) for r in (R.CPUID, R.RDMSR, R.WRMSR, R.VMCALL, R.HLT)},
        R.IO_INSTRUCTION: (F.EXIT_QUALIFICATION, F.VM_EXIT_INSTRUCTION_LEN, F.GUEST_RIP),
        R.EPT_VIOLATION: (F.GUEST_PHYSICAL_ADDRESS,),
    },
    writes={r: (F.GUEST_RIP,) for r in (R.CPUID, R.IO_INSTRUCTION, R.RDMSR, R.WRMSR, R.VMCALL, R.HLT)},
)

FOOTPRINTS: dict[str, Footprint] = {fp.name: fp for fp in (KVM, KVM2010, KVM2017, MINIMAL)}
DEFAULT_FOOTPRINT = "kvm"


def c_header(fp: Footprint) -> str:
    """The footprint as C tables for the minivisor (fields by exit reason)."""

    def row(fields: tuple[int, ...]) -> str:
        return "{" + ", ".join(f"{int(f):#06x}" for f in fields) + "}"

    lines = [
        f"/* footprint {fp.name}: {fp.description} (generated from nestvmx.guests.footprints) */",
        "#include <nestvmx.h>",
        f"static const u16 fp_common[] = {row(fp.common_reads)};",
        f"#define FP_NCOMMON {len(fp.common_reads)}",
        "static const u16 fp_reads[64][16] = {",
    ]
    lines += [f"    [{int(r)}] = {row(fields)}," for r, fields in fp.reads.items()]
    lines += ["};", "static const u8 fp_nreads[64] = {"]
    lines += [f"    [{int(r)}] = {len(fields)}," for r, fields in fp.reads.items()]
    lines += ["};", "static const u16 fp_writes[64][16] = {"]
    lines += [f"    [{int(r)}] = {row(fields)}," for r, fields in fp.writes.items()]
    lines += ["};", "static const u8 fp_nwrites[64] = {"]
    lines += [f"    [{int(r)}] = {len(fields)}," for r, fields in fp.writes.items()]
    lines += ["};", f"#define FP_NMSRS {len(fp.msr_reads)}"]
    lines += [f"static const u32 fp_msrs[FP_NMSRS + 1] = {{{''.join(f'{m:#x}, ' for m in fp.msr_reads)}0}};", ""]
    return "\n".join(lines)
