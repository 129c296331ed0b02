"""EntryChecks keeps VM-entry check results by their inputs: the kept result must always be the one
the checks give when run afresh (a cache that could answer wrongly would change the model)."""

from __future__ import annotations

import pytest

from nestvmx.arch.controls import PrimaryCtls, SecondaryCtls
from nestvmx.arch.fields import FIELD_BY_ENCODING, FieldType
from nestvmx.arch.fields import Field as F
from nestvmx.hw import vmentry
from nestvmx.hw.cpu_models import CpuModel
from nestvmx.hw.processor import VM_SUCCEED

from .conftest import SHADOW, VMCS_A, make_cpu, write_valid_vmcs
from .test_vmentry_checks import ALL_CASES, prepare


def _fresh(cpu) -> tuple[str, object] | None:
    return vmentry.EntryChecks(cpu.model)._evaluate(cpu.current.fields, cpu.memory, cpu.current_vmcs, cpu.state)


def test_kept_results_equal_fresh_checks(model: CpuModel) -> None:
    """Every table case, valid and broken, through one cache, twice over (the second pass answers
    from the cache): the same first failing rule as the checks themselves."""
    checks = vmentry.EntryChecks(model)
    cases = [c for c in ALL_CASES if c.tweak is None and (c.needs is None or c.needs.check(model))]
    checks.SIZE = len(cases)
    kept = []
    for _ in range(2):
        for c in cases:
            cpu = prepare(model, c)
            f = cpu.current.fields
            assert checks.first_failure(f, cpu.memory, cpu.current_vmcs, cpu.state) == _fresh(cpu), c.id
        kept.append(len(checks.results))
    assert 0 < kept[0] == kept[1]  # the second pass added nothing: it was answered from the cache


def test_results_kept_are_bounded(model: CpuModel) -> None:
    cpu = make_cpu(model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED and cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    for rip in range(0x1000, 0x1000 + 2 * vmentry.EntryChecks.SIZE):
        assert cpu.vmwrite(F.GUEST_RIP, rip) == VM_SUCCEED
        assert cpu.entry_checks.first_failure(cpu.current.fields, cpu.memory, cpu.current_vmcs, cpu.state) is None
    assert len(cpu.entry_checks.results) == vmentry.EntryChecks.SIZE


def test_link_pointer_revision_is_an_input(model: CpuModel) -> None:
    """Same fields, a different revision dword at the VMCS link pointer: a different result."""
    if not model.has_vmcs_shadowing:
        pytest.skip("no VMCS shadowing")
    cpu = make_cpu(model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED and cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    primary = cpu.vmread(F.CPU_BASED_VM_EXEC_CONTROL)[1] | PrimaryCtls.ACTIVATE_SECONDARY_CONTROLS
    assert cpu.vmwrite(F.CPU_BASED_VM_EXEC_CONTROL, primary) == VM_SUCCEED
    assert cpu.vmwrite(F.SECONDARY_VM_EXEC_CONTROL, SecondaryCtls.SHADOW_VMCS) == VM_SUCCEED
    for field in (F.VMREAD_BITMAP, F.VMWRITE_BITMAP):
        assert cpu.vmwrite(field, 0x20000) == VM_SUCCEED
    assert cpu.vmwrite(F.VMCS_LINK_POINTER, SHADOW) == VM_SUCCEED
    checks, f = cpu.entry_checks, cpu.current.fields
    assert checks.first_failure(f, cpu.memory, cpu.current_vmcs, cpu.state) is None
    cpu.memory.write_u(SHADOW, 4, model.revision_id)  # no longer marked as a shadow VMCS
    expected = (vmentry.GUEST, ("VMCS link pointer shadow-VMCS indicator", 4))
    assert checks.first_failure(f, cpu.memory, cpu.current_vmcs, cpu.state) == expected == _fresh(cpu)


def test_checks_that_read_other_memory_always_run(model: CpuModel) -> None:
    """With a TPR shadow the checks read the VTPR byte in memory: nothing is kept."""
    cpu = make_cpu(model)
    assert cpu.vmclear(VMCS_A) == VM_SUCCEED and cpu.vmptrld(VMCS_A) == VM_SUCCEED
    write_valid_vmcs(cpu)
    primary = cpu.vmread(F.CPU_BASED_VM_EXEC_CONTROL)[1] | PrimaryCtls.TPR_SHADOW
    assert cpu.vmwrite(F.CPU_BASED_VM_EXEC_CONTROL, primary) == VM_SUCCEED
    assert cpu.vmwrite(F.VIRTUAL_APIC_PAGE_ADDR, 0x21000) == VM_SUCCEED
    assert cpu.vmwrite(F.TPR_THRESHOLD, 5) == VM_SUCCEED
    checks, f = vmentry.EntryChecks(model), cpu.current.fields
    cpu.memory.write_u(0x21080, 1, 0x60)  # VTPR 6 >= threshold 5
    assert checks.first_failure(f, cpu.memory, cpu.current_vmcs, cpu.state) is None
    cpu.memory.write_u(0x21080, 1, 0x40)  # VTPR 4 < threshold 5
    assert checks.first_failure(f, cpu.memory, cpu.current_vmcs, cpu.state) == (
        vmentry.CONTROLS,
        "TPR threshold above VTPR",
    )
    assert not checks.results


class _Recording(dict):
    """A VMCS's fields that remember which ones were read."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[int] = set()

    def __getitem__(self, key: int) -> int:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: int, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_checks_read_no_exit_information_field(model: CpuModel) -> None:
    """The kept results leave the exit-information fields out of their key: no check may read one."""
    read: set[int] = set()
    for c in ALL_CASES:
        if c.tweak is None and (c.needs is None or c.needs.check(model)):
            cpu = prepare(model, c)
            f = _Recording(cpu.current.fields)
            vmentry.EntryChecks(model)._evaluate(f, cpu.memory, cpu.current_vmcs, cpu.state)
            read |= f.read
    assert read and not [FIELD_BY_ENCODING[e].name for e in read if model.fields[e].type is FieldType.READ_ONLY]
