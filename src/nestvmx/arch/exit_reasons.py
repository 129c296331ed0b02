"""Basic VM-exit reasons (SDM Vol. 3D Appendix C, Table C-1) and the exit-reason field layout."""

from __future__ import annotations

import enum


class ExitReason(enum.IntEnum):
    """Bits 15:0 of the exit-reason field.  Names follow the SDM (Linux's uapi spelling)."""

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    INVALID_GUEST_STATE = 33  # VM-entry failure
    MSR_LOADING = 34  # VM-entry failure
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR = 39
    PAUSE = 40
    MACHINE_CHECK = 41  # VM-entry failure
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    PCONFIG = 65
    SPP = 66
    UMWAIT = 67
    TPAUSE = 68
    LOADIWKEY = 69
    ENCLV = 70
    ENQCMD_PASID_FAIL = 72
    ENQCMDS_PASID_FAIL = 73
    BUS_LOCK = 74
    NOTIFY = 75  # instruction timeout
    SEAMCALL = 76
    TDCALL = 77
    RDMSRLIST = 78
    WRMSRLIST = 79


EXIT_REASON_FAILED_VMENTRY = 1 << 31  # bit 31 of the exit-reason field (SDM §28.2.1)


_NAMES = {reason.value: reason.name for reason in ExitReason}  # counted at every exit: no enum call


def exit_reason_name(basic: int) -> str:
    """SDM name of a basic exit reason; unknown numbers are shown as numbers."""
    return _NAMES.get(basic) or f"REASON_{basic}"


class EntryFailureQualification(enum.IntEnum):
    """Exit qualification of a reason-33 VM-entry failure (SDM §27.8)."""

    DEFAULT = 0
    PDPTE_LOAD = 2
    NMI_INJECTION = 3
    VMCS_LINK_POINTER = 4
