"""Coverage-guided fuzzing (atheris) of vmcs12 -> vmcs02 preparation.

Each input mutates the vmcs12 that the built-in L1 is about to VMLAUNCH (1 to 8 fields, each set
to a value or one bit flipped; any field, as L1 may VMWRITE any field with IA32_VMX_MISC bit 29),
then lets L0 emulate the VMLAUNCH (its checks, prepare_vmcs02, EPT02) and run a few exits of L2
and L1.  Invariants: no Python exception escapes; when L0's checks accept the vmcs12 the
processor accepts the vmcs02 L0 built from it (else L0's checks and its vmcs02 disagree); EPT02
stays within its page budget.  Coverage: nestvmx's own modules.

Usage: .venv/bin/pip install atheris==2.3.0
       .venv/bin/python benchmarks/fuzz_vmcs12.py -max_total_time=600 [other libFuzzer options]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["nestvmx"]):
    from nestvmx.api import Host
    from nestvmx.guests.build import build_minivisor
    from nestvmx.kvm import nested

HOST = Host("haswell", shadow_vmcs=False)  # with shadowing, VMLAUNCH would re-read fields from the shadow VMCS
STEPS = 12  # exits run after the VMLAUNCH
TIMER = 20_000  # guest instructions before the host timer ends a run that does not exit
refused: list[str] = []


def _snapshot() -> Path:
    """The built-in L1 stopped at the exit just before its VMLAUNCH, saved once."""
    program = build_minivisor("cpuid", 3, "kvm")
    trace: list[str] = []
    vm = HOST.create_vm(memory_mib=8)
    vm.load(program)
    vm.trace_sink = trace.append
    vm.run()
    exits = [line for line in trace if line.startswith("kvm_exit")]
    launch = next(i for i, line in enumerate(exits) if " reason VMLAUNCH " in line)
    vm = HOST.create_vm(memory_mib=8)
    vm.load(program)
    vm.run(max_exits=launch)
    path = Path(tempfile.mkdtemp()) / "before-vmlaunch.snapshot"
    vm.save(path)
    return path


SNAPSHOT = _snapshot()
FIELDS = sorted(HOST.restore(SNAPSHOT).kvm.vcpus[0].nested.model.fields)


def _record_refusal(self: nested.NestedVmx, result) -> None:
    refused.append(repr(result))
    _entry_failed(self, result)


_entry_failed = nested.NestedVmx.vmcs02_entry_failed
nested.NestedVmx.vmcs02_entry_failed = _record_refusal


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    vm = HOST.restore(SNAPSHOT)
    vcpu = vm.kvm.vcpus[0]
    vmcs12 = vcpu.nested.vmcs12
    changes = []
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        field = FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]
        bits = 8 * vcpu.nested.model.fields[field].width.bytes
        if fdp.ConsumeBool():
            value = vmcs12[field] ^ 1 << fdp.ConsumeIntInRange(0, bits - 1)
        else:
            value = fdp.ConsumeIntInRange(0, (1 << bits) - 1)
        vmcs12[field] = value
        changes.append(f"{field:#06x}={value:#x}")
    refused.clear()
    for _ in range(STEPS):
        end = vcpu.run_once(TIMER)
        ept02 = vcpu.nested.ept02
        assert ept02 is None or len(ept02.pages) <= nested.EPT02_MAX_PAGES, f"EPT02 grew: {changes}"
        if end is not None:
            assert end.outcome in ("exit", "crash"), (end, changes)
            break
    assert not refused, f"L0 accepted a vmcs12 whose vmcs02 the processor refused ({refused[0]}): {changes}"


if __name__ == "__main__":
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
