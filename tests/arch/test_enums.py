"""Exit reasons, VM-instruction errors, control bits and MSR indexes against the SDM tables."""

from __future__ import annotations

from nestvmx.arch import EntryCtls, ExitCtls, ExitReason, Msr, PinBased, PrimaryCtls, SecondaryCtls, VmxError
from nestvmx.arch.errors import RESERVED_ERROR_NUMBERS
from nestvmx.arch.exit_reasons import exit_reason_name


def test_vm_instruction_errors_cover_1_to_28() -> None:
    """SDM Vol. 3C §31.4, Table 31-1: 1-28 except the reserved 14, 21 and 27."""
    assert {e.value for e in VmxError} | set(RESERVED_ERROR_NUMBERS) == set(range(1, 29))
    assert VmxError.VMXON_IN_VMX_ROOT_OPERATION == 15
    assert VmxError.VMPTRLD_INCORRECT_VMCS_REVISION_ID == 11
    assert VmxError.INVALID_OPERAND_TO_INVEPT_INVVPID == 28


def test_exit_reasons_of_vmx_instructions() -> None:
    """SDM Vol. 3D Appendix C, Table C-1."""
    expected = {
        "VMCALL": 18,
        "VMCLEAR": 19,
        "VMLAUNCH": 20,
        "VMPTRLD": 21,
        "VMPTRST": 22,
        "VMREAD": 23,
        "VMRESUME": 24,
        "VMWRITE": 25,
        "VMXOFF": 26,
        "VMXON": 27,
        "INVEPT": 50,
        "INVVPID": 53,
    }
    assert {name: ExitReason[name].value for name in expected} == expected
    assert ExitReason.CPUID == 10 and ExitReason.EPT_VIOLATION == 48 and ExitReason.INVALID_GUEST_STATE == 33
    assert exit_reason_name(10) == "CPUID" and exit_reason_name(999) == "REASON_999"


def test_no_exit_reason_number_is_reserved_but_used() -> None:
    assert not {35, 38, 42, 71} & {r.value for r in ExitReason}


def test_control_bits() -> None:
    """SDM Vol. 3C Tables 25-5, 25-6, 25-7, 25-13, 25-15."""
    assert PinBased.PREEMPTION_TIMER == 1 << 6 and PinBased.POSTED_INTR == 1 << 7
    assert PrimaryCtls.USE_MSR_BITMAPS == 1 << 28 and PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS == 1 << 31
    assert SecondaryCtls.ENABLE_EPT == 1 << 1 and SecondaryCtls.SHADOW_VMCS == 1 << 14
    assert ExitCtls.HOST_ADDR_SPACE_SIZE == 1 << 9 and ExitCtls.SAVE_PREEMPTION_TIMER == 1 << 22
    assert EntryCtls.IA32E_MODE_GUEST == 1 << 9 and EntryCtls.LOAD_EFER == 1 << 15


def test_vmx_msr_indexes() -> None:
    """SDM Vol. 3D Appendix A: the capability MSRs are 0x480-0x493."""
    assert Msr.IA32_FEATURE_CONTROL == 0x3A
    assert Msr.IA32_VMX_BASIC == 0x480 and Msr.IA32_VMX_VMFUNC == 0x491 and Msr.IA32_VMX_EPT_VPID_CAP == 0x48C
    assert [m.value for m in Msr if 0x480 <= m <= 0x493] == list(range(0x480, 0x494))
