"""Running the guest of the current VMCS on Unicorn until a VM exit.

The processor model (hw) owns the VMX state; the engine is the part of the processor that
executes guest instructions.  `Engine.run()` enters with the processor in non-root operation,
runs guest code and returns the structured `VmExit` after `LogicalProcessor.vm_exit` has
recorded it in the VMCS and loaded host state.

Exit conditions and how they are caught (Unicorn 2.1.4; see shared/reference/ecosystem-style.md):
- VMX instructions (which Unicorn does not know): the invalid-instruction hook, then our decoder;
- the instructions Unicorn would execute without an exit or otherwise wrongly (CPUID, I/O,
  RDMSR/WRMSR, control-register and descriptor-table loads, RDTSC, STI and MOV to SS: _SPECIAL):
  each newly translated block is decoded (iced-x86) and their addresses go into the C
  instruction counter's sorted list, which calls the engine before they execute;
- exceptions: the interrupt hook; each goes through the exception bitmap and otherwise through
  the guest's IDT (delivery.py);
- HLT: emu_start returns after it;
- the host's timer (`run(timer=N)`, used by L0's scheduler): the instruction counter stops the
  guest when its count reaches N, and the processor takes the interrupt as an external-interrupt
  VM exit.
- EPT violations: guest-physical memory is mapped from host memory per EPT; an access Unicorn
  finds unmapped or forbidden is an EPT violation.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import iced_x86
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as _ucmod

from nestvmx.arch.controls import INTR_INFO_DELIVER_ERROR_CODE, INTR_INFO_VALID, InterruptionType
from nestvmx.arch.controls import ExitCtls as Exit
from nestvmx.arch.controls import PinBased as Pin
from nestvmx.arch.controls import PrimaryCtls as P
from nestvmx.arch.controls import SecondaryCtls as S
from nestvmx.arch.exit_reasons import ExitReason
from nestvmx.arch.fields import Field as F
from nestvmx.arch.msr import Msr
from nestvmx.engine import ept as ept_mod
from nestvmx.engine.delivery import Event, TripleFault, deliver, escalate
from nestvmx.engine.guest_memory import GuestMemory
from nestvmx.engine.native import InstructionCounter, ShadowPath, native_library, native_module
from nestvmx.engine.uc_state import (
    GPR_IDS,
    UnicornRegisters,
    descriptor_segment,
)
from nestvmx.engine.vmx_decode import decode_vmx
from nestvmx.hw.bitmaps import io_bitmap_bits, msr_bitmap_bit
from nestvmx.hw.exceptions import ERROR_CODE_VECTORS, Vector, X86Exception
from nestvmx.hw.instruction import MemOperand, VmxInstruction
from nestvmx.hw.processor import LogicalProcessor
from nestvmx.hw.state import CR0_PE, CR4_PCE, RFLAGS_IF, RFLAGS_VM, CpuState, Seg, Segment, canonical
from nestvmx.hw.vmcs import secondary_controls
from nestvmx.hw.vmexit import VmExit

_M = iced_x86.Mnemonic
# Instructions whose event Unicorn raises after them (INTO is #UD in 64-bit mode).
_SOFTWARE_EVENTS = {_M.INT: InterruptionType.SOFTWARE_INTERRUPT, _M.INT3: InterruptionType.SOFTWARE_EXCEPTION}
_IO = {_M.IN, _M.OUT, _M.INSB, _M.INSW, _M.INSD, _M.OUTSB, _M.OUTSW, _M.OUTSD}
_STRING_IO = {_M.INSB: 1, _M.INSW: 2, _M.INSD: 4, _M.OUTSB: 1, _M.OUTSW: 2, _M.OUTSD: 4}  # mnemonic: size
# Instructions Unicorn would execute without a VM exit (or, for IN/OUT/CPUID, too late to stop
# before them; LTR: wrongly; STI and MOV to SS: to note the blocking they start, see _special):
# the instruction counter stops the guest in front of each.
_SPECIAL = {_M.CPUID, _M.RDMSR, _M.WRMSR, _M.CLTS, _M.LMSW, _M.RDTSC, _M.RDTSCP, _M.LTR, _M.LGDT, _M.LIDT, _M.STI, *_IO}
# Instructions of the special ones that are #GP(0) at CPL > 0 (with MOV to/from CR; SDM Vol. 2).
_CPL0_ONLY = {_M.RDMSR, _M.WRMSR, _M.CLTS, _M.LMSW, _M.LTR, _M.LGDT, _M.LIDT}
_MOV_CR_CODES = {iced_x86.Code.MOV_R64_CR, iced_x86.Code.MOV_CR_R64, iced_x86.Code.MOV_R32_CR, iced_x86.Code.MOV_CR_R32}
_CR_NUMBER = {
    iced_x86.Register.CR0: 0,
    iced_x86.Register.CR2: 2,
    iced_x86.Register.CR3: 3,
    iced_x86.Register.CR4: 4,
    iced_x86.Register.CR8: 8,
}
_INVALID_INSTRUCTION = iced_x86.DecoderError.INVALID_INSTRUCTION
_ICED_GPR32 = frozenset(iced_x86.Register.EAX + i for i in range(16))
# iced-x86's general-purpose registers (64-, 32- and 16-bit) -> register number
_GPR_NUMBER = {
    first + i: i for first in (iced_x86.Register.RAX, iced_x86.Register.EAX, iced_x86.Register.AX) for i in range(16)
}
_CR0_TS = 1 << 3
_K = iced_x86.OpKind
_STRING_ADDRESS_SIZE = {  # INS/OUTS memory operand kind: 16-, 32- or 64-bit address size (0, 1, 2)
    _K.MEMORY_SEG_SI: 0,
    _K.MEMORY_SEG_ESI: 1,
    _K.MEMORY_SEG_RSI: 2,
    _K.MEMORY_ESDI: 0,
    _K.MEMORY_ESEDI: 1,
    _K.MEMORY_ESRDI: 2,
}
_R = iced_x86.Register
_SEGMENT_NUMBER = {_R.ES: Seg.ES, _R.CS: Seg.CS, _R.SS: Seg.SS, _R.DS: Seg.DS, _R.FS: Seg.FS, _R.GS: Seg.GS}
_NO_INSTRUCTION = 0xFFFF_FFFF_FFFF_FFFF  # the instruction counter's "last" before the first one
_NO_END = 0xFFFF_FFFF_FFFF_FFFF  # emu_start's `until` for a run that ends at a stop
_FETCH_FAULTS = (UC.UC_MEM_FETCH_UNMAPPED, UC.UC_MEM_FETCH_PROT)


_MOV_SREG_CODES = {iced_x86.Code.MOV_SREG_RM16, iced_x86.Code.MOV_SREG_R32M16, iced_x86.Code.MOV_SREG_R64M16}


def _mov_to_ss(ins: iced_x86.Instruction) -> bool:
    return ins.code in _MOV_SREG_CODES and ins.op0_register == iced_x86.Register.SS


_DR6_EXIT_BITS = 0x600F  # B0-B3, BD, BS: a #DB's exit qualification (SDM Table 28-1; no RTM here)
_CR4_TSD = 1 << 2


# Unicorn never delivers exceptions, so QEMU's record of the exception in progress is never
# cleared and the next fault would wrongly become #DF or a silent shutdown.  It sits at this
# offset of the saved CPU context of unicorn 2.1.4 (the pinned version); the engine clears it
# before every run.  QEMU's error code of the exception it raised sits 112 bytes before it
# (CPUX86State: error_code, exception_is_int, exception_next_eip, dr[8], 4 breakpoint pointers,
# old_exception).  tests/guests/exceptions.c and conformance/l2_events.c fail if either offset is wrong.
_OLD_EXCEPTION_OFFSET = 5536
_ERROR_CODE_OFFSET = _OLD_EXCEPTION_OFFSET - 112


class _QemuExceptionState:
    """QEMU's exception bookkeeping in one instance, through one context saved and restored in
    place (a new context per run cost ~3.5 us)."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.context = uc.context_save()
        address = ctypes.cast(self.context.context, ctypes.c_void_p).value
        self.old_exception = ctypes.c_int32.from_address(address + _OLD_EXCEPTION_OFFSET)
        self.error_code_field = ctypes.c_int32.from_address(address + _ERROR_CODE_OFFSET)

    def reset(self) -> None:
        """Forget the exception in progress (before every run)."""
        self.uc.context_update(self.context)
        self.old_exception.value = -1
        self.uc.context_restore(self.context)

    def error_code(self) -> int:
        """The error code of the exception QEMU is raising (read in the interrupt hook)."""
        self.uc.context_update(self.context)
        return self.error_code_field.value & 0xFFFF_FFFF


# Instruction decoders for Engine._decoded_at: (instruction, length), or None.
Decoder = Callable[[bytes, int], tuple[object, int] | None]


def _decode_vmx_mode(code: bytes, rip: int, long_mode_64: bool) -> tuple[VmxInstruction, int] | None:
    instr = decode_vmx(code, long_mode_64=long_mode_64)
    return None if instr is None else (instr, instr.length)


_decode_vmx64 = partial(_decode_vmx_mode, long_mode_64=True)
_decode_vmx32 = partial(_decode_vmx_mode, long_mode_64=False)


def _decode_x86(code: bytes, rip: int) -> tuple[iced_x86.Instruction, int] | None:
    if not code:  # nothing fetchable there
        return None
    ins = next(iter(iced_x86.Decoder(64, code, ip=rip)))
    return ins, ins.len


def _memory_operand(ins: iced_x86.Instruction) -> MemOperand:
    """The memory operand of an instruction iced-x86 decoded (64-bit mode), as the processor model
    takes it (hw.instruction.MemOperand)."""

    segment = _SEGMENT_NUMBER[ins.memory_segment]
    address_size = 32 if ins.memory_base in _ICED_GPR32 or ins.memory_index in _ICED_GPR32 else 64
    if ins.is_ip_rel_memory_operand:  # iced gives the target itself
        return MemOperand(segment, displacement=ins.ip_rel_memory_address, address_size=address_size)
    return MemOperand(
        segment,
        _GPR_NUMBER.get(ins.memory_base),
        _GPR_NUMBER.get(ins.memory_index),
        ins.memory_index_scale.bit_length() - 1,
        ins.memory_displacement,
        address_size,
    )


class EngineError(Exception):
    """The guest did something the model cannot continue from (not an architectural outcome)."""


@dataclass
class _Stop:
    kind: str  # "invalid", "exception", "special", "memory", "retranslate"
    rip: int
    data: dict = field(default_factory=dict)


def _shadow_path(engine: Engine) -> ShadowPath:
    """The C hook's fixed data; nothing is served until the engine arms it for a run."""
    uc = _ucmod.uclib
    return ShadowPath(
        reg_read_batch=ctypes.cast(uc.uc_reg_read_batch, ctypes.c_void_p),
        reg_write=ctypes.cast(uc.uc_reg_write, ctypes.c_void_p),
        vmem_read=ctypes.cast(uc.uc_vmem_read, ctypes.c_void_p),
        emu_stop=ctypes.cast(uc.uc_emu_stop, ctypes.c_void_p),
        state_ids=(ctypes.c_int * 4)(X.UC_X86_REG_RIP, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_RFLAGS),
        gpr_ids=(ctypes.c_int * 16)(*GPR_IDS),
        fields=None,
        access=engine.cpu.model.vmcs_access,
        events=engine.cpu.events,
        vmread_event="shadow_vmread",
        vmwrite_event="shadow_vmwrite",
        stop=engine._on_invalid,
        vmwrite_any_field=engine.cpu.model.vmwrite_any_field,
    )


class GuestContext:
    """One Unicorn instance per guest-physical address space (EPT pointer, or none)."""

    def __init__(self, engine: Engine, eptp: int | None) -> None:
        self.engine = engine
        self.eptp = eptp
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.regs = UnicornRegisters(self.uc)
        self.hooked: set[int] = set()
        self.scanned: set[int] = set()  # block starts already searched for special instructions
        self.scanned_code: dict[tuple[int, int], tuple[int, bytes]] = {}  # (CR3, block) -> (host address, bytes)
        self.code_pages: dict[int, bytes] = {}  # host pages holding translated code -> their bytes then
        self.ept_cache: dict = {}  # EPT translations of this instance's hierarchy (see GuestMemory)
        self.decoded: dict = {}  # (CR3, RIP, decoder) -> (host address, bytes, instruction) (see _decoded_at)
        self.counter = InstructionCounter(
            stop=ctypes.cast(_ucmod.uclib.uc_emu_stop, ctypes.c_void_p),
            reg_read=ctypes.cast(_ucmod.uclib.uc_reg_read, ctypes.c_void_p),
            rflags_id=X.UC_X86_REG_RFLAGS,
            on_special=engine._on_special,
        )
        self._special = (ctypes.c_uint64 * 0)()
        self.shadow_path = _shadow_path(engine)
        self.exception_state = _QemuExceptionState(self.uc)
        self._map_memory()
        self._add_hooks()

    def _map_memory(self) -> None:
        e = self.engine
        if self.eptp is None:
            self.uc.mem_map_ptr(0, e.cpu.memory.size, UC.UC_PROT_ALL, e.host_ptr)
            return
        for run in ept_mod.merge_runs(ept_mod.ept_mappings(e.cpu.model, e.cpu.memory, self.eptp)):
            if e.cpu.memory.contains(run.hpa, run.size):
                self.uc.mem_map_ptr(run.gpa, run.size, run.perms, e.host_ptr + run.hpa)

    def _add_hooks(self) -> None:
        uc, e = self.uc, self.engine
        uc.hook_add(UC.UC_HOOK_INSN, e._on_unscanned_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_add(UC.UC_HOOK_INTR, e._on_interrupt)
        uc.hook_add(UC.UC_HOOK_MEM_UNMAPPED | UC.UC_HOOK_MEM_PROT, e._on_memory_fault)
        uc.hook_add(UC.UC_HOOK_EDGE_GENERATED, e._on_new_block)
        # C callbacks (native.c): instruction counting, and shadowed VMREAD/VMWRITE in the invalid-
        # instruction hook (Unicorn does not know the VMX instructions).
        lib = native_library()
        self._add_native_hook(UC.UC_HOOK_CODE, lib.nestvmx_count_insn, self.counter)
        self._add_native_hook(UC.UC_HOOK_INSN_INVALID, lib.nestvmx_shadow_vmx, self.shadow_path)

    def _add_native_hook(self, kind: int, fn, data: ctypes.Structure) -> None:
        handle = ctypes.c_size_t()
        rc = _ucmod.uclib.uc_hook_add(
            self.uc._uch,
            ctypes.byref(handle),
            kind,
            ctypes.cast(fn, ctypes.c_void_p),
            ctypes.cast(ctypes.pointer(data), ctypes.c_void_p),
            ctypes.c_uint64(1),
            ctypes.c_uint64(0),
        )
        if rc:
            raise EngineError(f"cannot install a native Unicorn hook (unicorn error {rc})")

    def map_page(self, gpa: int) -> None:
        """Map (or re-protect) the 4 KiB guest-physical page at `gpa` as EPT now translates it."""
        e = self.engine
        m = ept_mod.ept_translate(e.cpu.model, e.cpu.memory, self.eptp, gpa & ~0xFFF)
        hpa = m.hpa + (gpa & ~0xFFF) - m.gpa
        if not e.cpu.memory.contains(hpa, 0x1000):
            raise EngineError(f"EPT maps guest-physical {gpa:#x} to host-physical {hpa:#x}, where no memory is")
        e.cpu.events["ept_walk"] += 1  # the walk a TLB miss on this page costs the processor
        try:
            self.uc.mem_map_ptr(gpa & ~0xFFF, 0x1000, m.perms, e.host_ptr + hpa)
        except UcError:
            self.uc.mem_protect(gpa & ~0xFFF, 0x1000, m.perms)  # already mapped: permissions changed

    def hook_special(self, address: int) -> None:
        """Have the instruction counter call Engine._on_special before the instruction at `address`."""
        if address not in self.hooked:
            self.hooked.add(address)
            self._special = (ctypes.c_uint64 * len(self.hooked))(*sorted(self.hooked))
            self.counter.special = ctypes.addressof(self._special)
            self.counter.n_special = len(self._special)


# The host's local APIC timer vector (Linux's LOCAL_TIMER_VECTOR).
HOST_TIMER_VECTOR = 0xEC


class Engine:
    """Executes the guest of the processor's current VMCS."""

    def __init__(self, cpu: LogicalProcessor) -> None:
        self.cpu = cpu
        self.executed = 0  # guest instructions of all runs
        self.tsc_base = 0  # the time-stamp counter is tsc_base + instructions executed (see _rdtsc)
        self._run_start = 0  # the running context's instruction count when this run began
        self.host_ptr = ctypes.addressof(ctypes.c_char.from_buffer(cpu.memory.buffer))
        self.contexts: dict[int | None, GuestContext] = {}
        self.retired_instructions: dict[int | None, int] = {}
        self.ctx: GuestContext | None = None
        self.stop: _Stop | None = None
        self.skip_special: int | None = None
        self.run_until: int | None = None  # where the next run ends (see _page_crossing_ahead)
        # (address, interruptibility bit) of the last STI that set IF or MOV to SS of this entry.
        self.blocking_by: tuple[int, int] | None = None
        self.cr2_before_run = 0
        self._native = native_module()
        cpu.on_invalidate = self._on_invalidate

    # ------------------------------------------------------------ public

    def tsc(self) -> int:
        """The processor's time-stamp counter between runs (IA32_TIME_STAMP_COUNTER)."""
        return self.tsc_base + self.executed

    def instruction_counts(self) -> dict[int | None, int]:
        """Guest instructions executed, by EPT pointer (i.e. by guest), including dropped contexts."""
        counts = dict(self.retired_instructions)
        for eptp, ctx in self.contexts.items():
            counts[eptp] = counts.get(eptp, 0) + ctx.counter.count
        return counts

    def guest_memory(self) -> GuestMemory:
        eptp = self._eptp()
        ctx = self.contexts.get(eptp)
        return GuestMemory(self.cpu.model, self.cpu.memory, self.cpu.state, eptp, ctx.ept_cache if ctx else None)

    def run(self, timer: int | None = None) -> VmExit:
        """Run guest code from the current state until a VM exit; return it.  With `timer`, the
        host's timer interrupt arrives once the guest has executed that many instructions."""
        ctx = self._context(self._eptp()) if self.cpu.non_root else None
        if ctx is None:
            raise EngineError("run() needs a guest: VMLAUNCH/VMRESUME first")
        self.ctx = ctx
        self._run_start = ctx.counter.count
        ctx.counter.limit = self._run_start + timer if timer else 0
        ctx.counter.last = ctx.counter.previous = _NO_INSTRUCTION  # what it sees start belongs to this entry
        self.blocking_by = self.run_until = self.skip_special = None
        try:
            return self._run(ctx)
        finally:
            ctx.counter.limit = 0
            self.executed += ctx.counter.count - self._run_start

    def _drop_stale_translations(self, ctx: GuestContext) -> None:
        """Unicorn invalidates translations on writes made through the same instance only; another
        instance (another guest, another vCPU) or the model itself may have written code that
        this one translated.  So the pages holding its code are compared with their bytes then."""
        buffer = self.cpu.memory.buffer
        if all(buffer[page : page + 0x1000] == snapshot for page, snapshot in ctx.code_pages.items()):
            return
        ctx.uc.ctl_flush_tb()
        ctx.scanned.clear()
        ctx.code_pages.clear()

    def _run(self, ctx: GuestContext) -> VmExit:
        cpu = self.cpu
        if cpu.pending_injection:
            exit = self._inject(cpu.pending_injection)
            cpu.pending_injection = None
            if exit:
                return exit
        while True:
            if ctx.counter.limit and ctx.counter.count >= ctx.counter.limit:
                return self._host_interrupt(cpu.current.fields)  # came due during the last stop
            exit = self._map_descriptors(ctx)
            if exit is not None:
                return exit
            try:
                ctx.regs.load(cpu.state)
            except UcError as err:  # Unicorn checks a loaded selector against its GDT descriptor
                raise EngineError(
                    f"the model cannot load the guest's segment registers at RIP {cpu.state.rip:#x}: a selector's "
                    f"GDT descriptor does not fit it ({err}); a VM entry takes them from the VMCS"
                ) from err
            ctx.exception_state.reset()
            self._drop_stale_translations(ctx)
            self.stop = None
            self.cr2_before_run = cpu.state.cr2
            self._arm_shadow_path(ctx)
            if cpu.state.rip not in ctx.scanned:  # the first block of a run is not reported as new
                ctx.scanned.add(cpu.state.rip)
                self._scan(cpu.state.rip)
            try:
                try:
                    ctx.uc.emu_start(cpu.state.rip, self.run_until or _NO_END)
                finally:
                    self._native.raise_callback_error()  # an exception of a callback of native.c
            except UcError as err:
                if self.stop is None:
                    raise EngineError(f"emulation error at RIP {ctx.uc.reg_read(X.UC_X86_REG_RIP):#x}: {err}") from err
            exit = self._after_stop()
            if exit is not None:
                return exit

    def _map_descriptors(self, ctx: GuestContext) -> VmExit | None:
        """Unicorn reads a segment descriptor from the GDT whenever a selector is written (a VM
        entry does not), and crashes if that read finds no memory outside `emu_start`.  So before
        selectors change, the GDT entries and the paging structures that map them are mapped into
        the instance, or the access takes the EPT violation it would cause (EPT02 is filled lazily)."""
        s = self.cpu.state
        held = ctx.regs.selectors()
        changed = [seg.selector for seg, old in zip(s.segs[:6], held, strict=True) if seg.selector != old]
        linears = {s.gdtr_base + (sel & ~7) for sel in changed if self._in_gdt(sel)}
        if not linears:
            return None
        memory = GuestMemory(self.cpu.model, self.cpu.memory, s, ctx.eptp, ctx.ept_cache)
        memory.touched = set()
        for linear in sorted(linears):
            try:
                gpa = memory.linear_to_gpa(linear)
            except X86Exception as exc:
                raise EngineError(
                    f"the guest's GDT entry at linear {linear:#x} is not mapped by its page tables "
                    "(the model cannot load its segment registers)"
                ) from exc
            except ept_mod.EptFault as fault:
                return self._ept_exit(fault, access=1, linear=linear, in_walk=True)
            try:
                memory.gpa_to_hpa(gpa, ept_mod.EPT_READ)
            except ept_mod.EptFault as fault:
                return self._ept_exit(fault, access=1, linear=linear)
        for page in memory.touched:
            ctx.map_page(page << 12)
        return None

    # ------------------------------------------------------------ contexts

    def _eptp(self) -> int | None:
        f = self.cpu.current.fields
        if secondary_controls(f) & S.ENABLE_EPT:
            return f[F.EPT_POINTER]
        return None

    def _context(self, eptp: int | None) -> GuestContext:
        ctx = self.contexts.get(eptp)
        if ctx is None:
            ctx = self.contexts[eptp] = GuestContext(self, eptp)
        return ctx

    def _on_invalidate(self, kind: str, type_: int, context: int | None) -> None:
        """INVEPT: drop the translations (the Unicorn instance) of the named EPTP, or of all."""
        if kind != "ept":
            return  # VPID-tagged linear translations are not cached across exits by this model
        for eptp in [k for k in self.contexts if k is not None and (context is None or k & ~0xFFF == context & ~0xFFF)]:
            dropped = self.contexts.pop(eptp)
            self.retired_instructions[eptp] = self.retired_instructions.get(eptp, 0) + dropped.counter.count

    # ------------------------------------------------------------ hooks

    def _halt(self, kind: str, rip: int, **data) -> None:
        self.stop = _Stop(kind, rip, data)
        self.ctx.uc.emu_stop()

    def _on_unscanned_cpuid(self, uc: Uc, _ud) -> int:
        # Every CPUID is caught by a code hook before it executes; reaching here is a model bug.
        raise EngineError(f"CPUID at {uc.reg_read(X.UC_X86_REG_RIP):#x} escaped interception")

    def _on_invalid(self) -> None:
        """An instruction Unicorn does not know that the C hook did not serve: stop in front of it."""
        if self.stop is None:
            self._halt("invalid", self.ctx.uc.reg_read(X.UC_X86_REG_RIP))

    def _arm_shadow_path(self, ctx: GuestContext) -> None:
        """Let the C hook serve shadowed VMREAD/VMWRITE in this run as the processor would (native.c)."""
        p, cpu = ctx.shadow_path, self.cpu
        in_use = cpu.shadow_vmcs_in_use()
        p.fields = None
        if in_use is None:
            return
        shadow, read_bitmap, write_bitmap = in_use
        s, memory = cpu.state, cpu.memory
        p.vmread_bitmap = self.host_ptr + read_bitmap if memory.contains(read_bitmap, 0x1000) else None
        p.vmwrite_bitmap = self.host_ptr + write_bitmap if memory.contains(write_bitmap, 0x1000) else None
        p.cs, p.ss = s.segs[Seg.CS].selector, s.segs[Seg.SS].selector
        p.op64 = s.in_64bit_mode
        p.fields = shadow.fields

    def _decoded_at(self, cr3: int, rip: int, decode: Decoder = _decode_vmx64):
        """The instruction at RIP as `decode` reads it, from a cache checked against the bytes in
        host memory; None if it cannot be fetched or is not one `decode` knows."""
        ctx = self.ctx
        key = (cr3, rip, decode)
        hit = ctx.decoded.get(key)
        buffer = self.cpu.memory.buffer
        if hit and buffer[hit[0] : hit[0] + len(hit[1])] == hit[1]:
            return hit[2]
        memory = GuestMemory(self.cpu.model, self.cpu.memory, self._uc_paging_state(), ctx.eptp, ctx.ept_cache)
        try:
            code = memory.fetch(rip, 15)
            decoded = decode(code, rip)
            if decoded is None:
                return None
            instr, length = decoded
            if (rip & 0xFFF) + length <= 0x1000:
                ctx.decoded[key] = (self._block_hpa(memory, rip), code[:length], instr)
        except (X86Exception, ept_mod.EptFault):
            return None
        return instr

    def _on_interrupt(self, uc: Uc, vector: int, _ud) -> None:
        # CR2 must be read here: after emu_start returns, Unicorn reports a wrong CR2.
        if self.stop is None:
            rip, cr2, dr6 = (uc.reg_read(reg) for reg in (X.UC_X86_REG_RIP, X.UC_X86_REG_CR2, X.UC_X86_REG_DR6))
            error_code = self.ctx.exception_state.error_code()
            self._halt("exception", rip, vector=vector, cr2=cr2, dr6=dr6, error_code=error_code)

    def _on_memory_fault(self, uc: Uc, access: int, address: int, size: int, value: int, _ud) -> bool:
        if self.stop is None:
            self._halt("memory", uc.reg_read(X.UC_X86_REG_RIP), access=access, address=address)
        return False

    def _on_special(self, address: int) -> bool:
        """The counter's call before a special instruction: False when it runs again after the stop
        in front of it (counted then), else the guest stops there."""
        if self.skip_special == address:
            self.skip_special = None
            return False
        self._halt("special", address)
        return True

    def _on_new_block(self, uc: Uc, cur, prev, _ud) -> None:
        # Hooks placed now miss this translation: stop before it runs and start again there.
        if self._scan(cur.pc, cur.size) and self.stop is None:
            self._halt("retranslate", cur.pc)

    def _scan(self, pc: int, size: int = 64) -> bool:
        """Have the counter stop in front of the instructions Unicorn would execute without a VM exit
        (_SPECIAL); True if new ones were found."""
        ctx = self.ctx
        cr3 = ctx.regs.cr3()
        seen = ctx.scanned_code.get((cr3, pc))
        buffer = self.cpu.memory.buffer
        if seen and buffer[seen[0] : seen[0] + len(seen[1])] == seen[1]:
            self._note_code_page(ctx, seen[0])
            return False  # retranslated after a flush, same bytes: its addresses are still listed
        memory = GuestMemory(self.cpu.model, self.cpu.memory, self._uc_paging_state(), ctx.eptp, ctx.ept_cache)
        code = memory.fetch(pc, size)
        for linear in {pc, pc + len(code) - 1} if code else ():
            self._note_code_page(ctx, self._block_hpa(memory, linear))
        if code and (pc & 0xFFF) + len(code) <= 0x1000:  # within one page: remember where it lives
            ctx.scanned_code[(cr3, pc)] = (self._block_hpa(memory, pc), code)
        found = False
        decoder = iced_x86.Decoder(64, code, ip=pc)
        for ins in decoder:
            # An encoding the SDM makes #UD that QEMU may execute anyway (e.g. LOCK RDTSC): stop there too.
            undefined = ins.code == iced_x86.Code.INVALID and decoder.last_error == _INVALID_INSTRUCTION
            if ins.mnemonic in _SPECIAL or ins.code in _MOV_CR_CODES or _mov_to_ss(ins) or undefined:
                if ins.ip not in ctx.hooked:
                    ctx.hook_special(ins.ip)
                    found = True
        if found:
            ctx.uc.ctl_remove_cache(pc, pc + len(code))
        return found

    def _note_code_page(self, ctx: GuestContext, hpa: int) -> None:
        page = hpa & ~0xFFF
        if page not in ctx.code_pages:
            ctx.code_pages[page] = bytes(self.cpu.memory.buffer[page : page + 0x1000])

    def _block_hpa(self, memory: GuestMemory, pc: int) -> int:
        return memory.gpa_to_hpa(memory.linear_to_gpa(pc, fetch=True), 0)

    def _uc_paging_state(self) -> CpuState:
        uc, s = self.ctx.uc, CpuState()
        s.cr0, s.cr3, s.cr4 = (
            uc.reg_read(X.UC_X86_REG_CR0),
            uc.reg_read(X.UC_X86_REG_CR3),
            uc.reg_read(X.UC_X86_REG_CR4),
        )
        s.efer = uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080)
        s.segs[2] = Segment(0, 0, 0, 0x10093)  # supervisor fetches: the code bytes, not a privilege check
        return s

    # ------------------------------------------------------------ after a stop

    def _save_state(self) -> None:
        self.ctx.regs.save(self.cpu.state, self._gdt_segment)

    def _after_stop(self) -> VmExit | None:
        stop, cpu = self.stop, self.cpu
        if stop is None:
            return self._after_plain_return()
        self.run_until = None
        self._save_state()
        cpu.state.rip = stop.rip
        if stop.kind in ("memory", "exception") and stop.rip == self.ctx.counter.last:
            cpu.state.rflags = self.ctx.counter.rflags  # a fault: RFLAGS as the instruction started (native.c)
        # A #PF or fetch fault before the instruction at RIP started (the counter did not see it).
        fetch = stop.data.get("vector") == Vector.PF or stop.data.get("access") in _FETCH_FAULTS
        if (
            fetch
            and stop.rip != self.ctx.counter.last
            and (crossing := self._page_crossing_ahead(stop.rip, stop.data.get("cr2", stop.data.get("address"))))
        ):
            self.run_until = crossing  # run the instructions before it; it then faults on its own
            return None
        if stop.kind == "invalid":
            return self._invalid_instruction(stop.rip)
        if stop.kind == "exception":
            cpu.state.cr2 = stop.data["cr2"]
            return self._interrupt(stop.data["vector"], stop.data["dr6"], stop.data["error_code"])
        if stop.kind == "special":
            return self._special(stop.rip)
        if stop.kind == "retranslate":
            return None
        return self._memory_fault(stop)

    def _page_crossing_ahead(self, rip: int, address: int | None) -> int | None:
        """Unicorn 2.1.4 (QEMU 5.0) raises the fault of fetching an instruction that crosses into
        the next page while it translates the block that instruction ends, with the block's first
        RIP: the instructions before it have not run.  That instruction's address, if the
        straight-line code from RIP reaches it; else None (the fault is RIP's own)."""
        page_end = (rip | 0xFFF) + 1
        if address != page_end:
            return None
        try:
            code = self.guest_memory().fetch(rip, page_end - rip)
        except (X86Exception, ept_mod.EptFault):
            return None
        decoder = iced_x86.Decoder(64, code, ip=rip)
        for ins in decoder:
            if ins.code == iced_x86.Code.INVALID:
                no_more = decoder.last_error == iced_x86.DecoderError.NO_MORE_BYTES
                return ins.ip if no_more and ins.ip != rip else None
            if ins.flow_control != iced_x86.FlowControl.NEXT:
                return None  # the block ends here, before the page does
        return None

    def _after_plain_return(self) -> VmExit | None:
        """emu_start returned by itself: the guest executed HLT, the host's timer stopped it, or
        it reached `run_until` (see _page_crossing_ahead)."""
        self._save_state()
        s, counter = self.cpu.state, self.ctx.counter
        if s.rip == self.run_until:
            self.run_until = None
            return None
        f = self.cpu.current.fields
        last = self._decoded_at(s.cr3, counter.last, _decode_x86)  # the instruction executed last
        if last is not None and last.mnemonic == _M.HLT and counter.last + last.len == s.rip:  # prefixes too
            s.rip = counter.last
            if s.cpl > 0:  # Unicorn halts at any CPL; HLT is privileged, and the fault comes first (§26.1.1)
                return self._exception(Vector.GP, 0)
            if f[F.CPU_BASED_VM_EXEC_CONTROL] & P.HLT_EXITING:
                return self._exit(ExitReason.HLT, length=last.len)
            raise EngineError(f"guest halted at RIP {s.rip:#x} with HLT exiting off: nothing can wake it")
        if counter.limit and counter.count >= counter.limit:
            return self._host_interrupt(f)
        raise EngineError(f"guest stopped at RIP {s.rip:#x} for no known reason")

    def _host_interrupt(self, f: dict[int, int]) -> VmExit:
        """The host's timer interrupt: an external-interrupt VM exit (SDM §27.2, §28.2.2)."""
        if not f[F.PIN_BASED_VM_EXEC_CONTROL] & Pin.EXT_INTR_EXITING:
            raise EngineError("the host's timer fired in a guest without external-interrupt exiting")
        info = 0
        if f[F.VM_EXIT_CONTROLS] & Exit.ACK_INTR_ON_EXIT:  # the interrupt is acknowledged: its vector is valid
            info = HOST_TIMER_VECTOR | InterruptionType.EXTERNAL_INTERRUPT << 8 | INTR_INFO_VALID
        return self._exit(ExitReason.EXTERNAL_INTERRUPT, intr_info=info)

    def _exit(self, reason: int, length: int = 0, **info) -> VmExit:
        self.cpu.state.interruptibility = self._blocking()
        return self.cpu.vm_exit(VmExit(reason=reason, instruction_length=length, **info))

    def _blocking(self) -> int:
        """Blocking by STI or MOV SS where the guest stops (SDM Table 25-3): for one instruction
        after an STI that set IF or a MOV to SS; the blocking a VM entry loaded lasts until an
        instruction completes."""
        s, counter = self.cpu.state, self.ctx.counter
        before = counter.previous if counter.last == s.rip else counter.last  # completed just before RIP
        if before == _NO_INSTRUCTION:
            return s.interruptibility
        return self.blocking_by[1] if self.blocking_by and self.blocking_by[0] == before else 0

    # I/O (SDM §26.1.3 and Table 28-5)
    def _io_instruction(self, ins) -> VmExit | None:
        s = self.cpu.state
        is_in = ins.mnemonic in (_M.IN, _M.INSB, _M.INSW, _M.INSD)
        string = ins.mnemonic in _STRING_IO
        immediate = iced_x86.OpKind.IMMEDIATE8 in (ins.op0_kind, ins.op1_kind)
        port = ins.immediate8 if immediate else s.gpr[2] & 0xFFFF
        if string:
            size = _STRING_IO[ins.mnemonic]
        else:
            data_reg = ins.op0_register if is_in else ins.op1_register
            size = {iced_x86.Register.AL: 1, iced_x86.Register.AX: 2, iced_x86.Register.EAX: 4}[data_reg]
        if not self._io_permitted(port, size):  # checked before the VM exit (SDM §26.1.1)
            return self._exception(Vector.GP, 0)
        if not self._io_exits(port, size):
            self.skip_special = ins.ip  # not intercepted: Unicorn executes it (no device answers)
            return None
        qualification = (size - 1) | int(is_in) << 3 | int(string) << 4 | int(ins.has_rep_prefix) << 5
        qualification |= int(immediate) << 6 | port << 16
        info = {}
        if string:  # the memory operand: address size and segment (SDM Table 28-8), its linear address
            address_size = _STRING_ADDRESS_SIZE[ins.op0_kind if is_in else ins.op1_kind]
            segment = _SEGMENT_NUMBER[ins.memory_segment]
            offset = s.gpr[7 if is_in else 6] & (1 << (16 << address_size)) - 1
            base = s.segs[segment].base if segment >= Seg.FS or not s.in_64bit_mode else 0
            info["guest_linear_address"] = (base + offset) & 0xFFFF_FFFF_FFFF_FFFF
            info["instruction_info"] = address_size << 7 | segment << 15
        return self._exit(ExitReason.IO_INSTRUCTION, length=ins.len, qualification=qualification, **info)

    def _io_permitted(self, port: int, size: int) -> bool:
        """Protected-mode I/O permission (SDM Vol. 1 §19.5): with CPL > IOPL, or in virtual-8086
        mode, every port accessed needs its bit clear in the TSS's I/O permission bitmap, whose 2
        bytes read must lie within TR's limit."""
        s = self.cpu.state
        if not s.cr0 & CR0_PE or (s.cpl <= (s.rflags >> 12) & 3 and not s.rflags & RFLAGS_VM):
            return True
        tr = s.segs[Seg.TR]
        if tr.limit < 0x67:
            return False
        memory = self.guest_memory()
        offset = int.from_bytes(memory.read(tr.base + 0x66, 2), "little") + port // 8
        if offset + 1 > tr.limit:
            return False
        bits = int.from_bytes(memory.read(tr.base + offset, 2), "little")
        return not bits >> (port & 7) & ((1 << size) - 1)

    def _io_exits(self, port: int, size: int) -> bool:
        f = self.cpu.current.fields
        primary = f[F.CPU_BASED_VM_EXEC_CONTROL]
        if not primary & P.USE_IO_BITMAPS:
            return bool(primary & P.UNCOND_IO_EXITING)
        bits = io_bitmap_bits(port, size)
        bitmaps = (f[F.IO_BITMAP_A], f[F.IO_BITMAP_B])
        return bits is None or any(self.cpu.memory.read_bus(bitmaps[b] + o, 1) >> i & 1 for b, o, i in bits)

    # VMX instructions and #UD
    def _invalid_instruction(self, rip: int) -> VmExit | None:
        s = self.cpu.state
        instr = self._decoded_at(s.cr3, rip, _decode_vmx64 if s.in_64bit_mode else _decode_vmx32)
        if instr is None:
            return self._unknown_to_unicorn(rip)
        s.interruptibility = self._blocking()  # VMLAUNCH/VMRESUME check it; their exits record it
        try:
            return self.cpu.execute(instr, self.guest_memory())
        except X86Exception as exc:
            return self._exception(exc.vector, exc.error_code, exc.address)
        except ept_mod.EptFault as fault:
            return self._ept_exit(fault, access=2, linear=None)

    def _unknown_to_unicorn(self, rip: int) -> VmExit | None:
        """Instructions Unicorn 2.1.4 raises #UD for.  INT1 (ICEBP, F1): a #DB trap raised as a
        privileged software exception (SDM Vol. 2A INT1; §26.2, §28.2.4).  RDPMC: an exit with RDPMC
        exiting (§26.1.3), else #GP(0): the model has no performance-monitoring counters (CPUID
        leaf 0AH reports none), so no ECX selects one.  Anything else: #UD."""
        s = self.cpu.state
        ins = self._decoded_at(s.cr3, rip, _decode_x86)
        mnemonic = ins.mnemonic if ins is not None and ins.code != iced_x86.Code.INVALID else None
        if mnemonic == _M.INT1:
            s.rip += ins.len
            return self._raise(Event(Vector.DB, None, InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION), ins.len)
        if mnemonic == _M.RDPMC:
            if s.cpl > 0 and not s.cr4 & CR4_PCE:  # a privilege fault, before the exit (§26.1.1)
                return self._exception(Vector.GP, 0)
            if self.cpu.current.fields[F.CPU_BASED_VM_EXEC_CONTROL] & P.RDPMC_EXITING:
                return self._exit(ExitReason.RDPMC, length=ins.len)
            return self._exception(Vector.GP, 0)
        return self._exception(Vector.UD)

    # The special instructions (_SPECIAL, MOV CR, undefined encodings), the guest stopped in front of each
    def _special(self, rip: int) -> VmExit | None:
        ins = self._decoded_at(self.cpu.state.cr3, rip, _decode_x86)
        if ins is None or ins.code == iced_x86.Code.INVALID:
            return self._exception(Vector.UD)
        try:
            return self._special_instruction(ins, rip)
        except X86Exception as exc:  # reading a memory operand (LTR, LMSW, the TSS's I/O bitmap)
            return self._exception(exc.vector, exc.error_code, exc.address)
        except ept_mod.EptFault as fault:
            return self._ept_exit(fault, access=1, linear=None)

    def _special_instruction(self, ins, rip: int) -> VmExit | None:
        s, f = self.cpu.state, self.cpu.current.fields
        if s.cpl > 0 and (ins.mnemonic in _CPL0_ONLY or ins.code in _MOV_CR_CODES):
            return self._exception(Vector.GP, 0)  # privilege faults come before VM exits (SDM §26.1.1)
        if ins.mnemonic == _M.CPUID:
            return self._exit(ExitReason.CPUID, length=ins.len)
        if ins.mnemonic in _IO:
            return self._io_instruction(ins)
        if ins.mnemonic in (_M.RDTSC, _M.RDTSCP):
            return self._rdtsc(ins, f)
        mov_ss = _mov_to_ss(ins)
        if ins.mnemonic == _M.STI or mov_ss:  # seen before they run: the blocking they start
            self.blocking_by = (rip, 2) if mov_ss else (rip, 1) if not s.rflags & RFLAGS_IF else None
            self.skip_special = rip
            return None
        if ins.mnemonic == _M.LTR:  # QEMU loads a null selector; the SDM makes it #GP(0) (LTR, Vol. 2A)
            if self._operand_value(ins, 0) & 0xFFFC == 0:
                return self._exception(Vector.GP, 0)
            self.skip_special = rip  # QEMU makes the other checks
            return None
        if ins.mnemonic in (_M.LGDT, _M.LIDT):
            return self._load_descriptor_table(ins, rip)
        if ins.mnemonic in (iced_x86.Mnemonic.RDMSR, iced_x86.Mnemonic.WRMSR):
            write = ins.mnemonic == iced_x86.Mnemonic.WRMSR
            if self._msr_exits(s.gpr[1] & 0xFFFF_FFFF, write):
                return self._exit(ExitReason.WRMSR if write else ExitReason.RDMSR, length=2)
            self.skip_special = rip  # let Unicorn execute it
            return None
        return self._cr_access(ins, f)

    def _load_descriptor_table(self, ins, rip: int) -> VmExit | None:
        """LGDT/LIDT: QEMU loads a non-canonical base in 64-bit mode; Intel processors, Bochs and
        KVM's emulator (em_lgdt_lidt) raise #GP(0) with nothing loaded.  The other checks and the
        operand's own faults are QEMU's: it executes the instruction (conformance/gp_faults.c)."""
        s = self.cpu.state
        if s.in_64bit_mode and ins.op0_kind == iced_x86.OpKind.MEMORY:  # CPL 0: see _special_instruction
            try:
                base = int.from_bytes(self.guest_memory().read(self._memory_operand_address(ins) + 2, 8), "little")
            except (X86Exception, ept_mod.EptFault):
                base = 0  # the instruction faults on its operand
            if not canonical(base):
                return self._exception(Vector.GP, 0)
        self.skip_special = rip
        return None

    def _rdtsc(self, ins, f: dict[int, int]) -> VmExit | None:
        """RDTSC/RDTSCP (SDM §26.1.3, Vol. 2B): an exit with RDTSC exiting, else the time-stamp
        counter, which here counts the instructions this processor has run (Unicorn would give the
        host's clock, and runs would not repeat), plus the TSC offset where the VMCS applies one."""
        s = self.cpu.state
        primary = f[F.CPU_BASED_VM_EXEC_CONTROL]
        rdtscp = ins.mnemonic == _M.RDTSCP
        if rdtscp and not secondary_controls(f) & S.ENABLE_RDTSCP:
            return self._exception(Vector.UD)
        if s.cr4 & _CR4_TSD and s.cpl > 0:
            return self._exception(Vector.GP, 0)
        if primary & P.RDTSC_EXITING:
            return self._exit(ExitReason.RDTSCP if rdtscp else ExitReason.RDTSC, length=ins.len)
        tsc = self.tsc() + self.ctx.counter.count - self._run_start
        if primary & P.USE_TSC_OFFSETTING:
            tsc += f[F.TSC_OFFSET]
        tsc &= 0xFFFF_FFFF_FFFF_FFFF
        s.gpr[0], s.gpr[2] = tsc & 0xFFFF_FFFF, tsc >> 32
        if rdtscp:
            s.gpr[1] = s.msrs.get(Msr.IA32_TSC_AUX, 0) & 0xFFFF_FFFF
        s.rip += ins.len
        return None

    def _msr_exits(self, index: int, write: bool) -> bool:
        f = self.cpu.current.fields
        position = msr_bitmap_bit(index, write)
        if not f[F.CPU_BASED_VM_EXEC_CONTROL] & P.USE_MSR_BITMAPS or position is None:
            return True
        return bool(self.cpu.memory.read_bus(f[F.MSR_BITMAP] + position[0], 1) >> position[1] & 1)

    def _cr_access(self, ins, f: dict[int, int]) -> VmExit | None:
        s = self.cpu.state
        primary = f[F.CPU_BASED_VM_EXEC_CONTROL]
        length = ins.len
        if ins.mnemonic == iced_x86.Mnemonic.CLTS:
            mask, shadow = f[F.CR0_GUEST_HOST_MASK], f[F.CR0_READ_SHADOW]
            if mask & _CR0_TS and shadow & _CR0_TS:
                return self._exit(ExitReason.CR_ACCESS, length=length, qualification=2 << 4)
            if not mask & _CR0_TS:
                s.cr0 &= ~_CR0_TS
            s.rip += length
            return None
        if ins.mnemonic == iced_x86.Mnemonic.LMSW:
            source = self._operand_value(ins, 0) & 0xFFFF
            mask, shadow = f[F.CR0_GUEST_HOST_MASK] & 0xF, f[F.CR0_READ_SHADOW] & 0xF
            if (source ^ shadow) & mask & 0xE or (mask & 1 and source & 1 and not shadow & 1):
                memory = ins.op0_kind == iced_x86.OpKind.MEMORY
                info = {}
                if memory:  # the operand's linear address (SDM §28.2.1)
                    info["guest_linear_address"] = self._memory_operand_address(ins)
                return self._exit(
                    ExitReason.CR_ACCESS, length=length, qualification=3 << 4 | int(memory) << 6 | source << 16, **info
                )
            source = (source & 0xF) | (s.cr0 & 1)  # LMSW cannot clear PE
            s.cr0 = (s.cr0 & ~0xF) | (source & ~mask) | (s.cr0 & mask)
            s.rip += length
            return None
        to_cr = ins.code in (iced_x86.Code.MOV_CR_R64, iced_x86.Code.MOV_CR_R32)
        cr = _CR_NUMBER.get(ins.op0_register if to_cr else ins.op1_register)
        gpr_reg = ins.op1_register if to_cr else ins.op0_register
        gpr = _GPR_NUMBER[gpr_reg]
        if cr is None:
            return self._exception(Vector.UD)
        if cr == 2:  # never intercepted; emulated because Unicorn's CR2 is not reliable (uc_state.py)
            if to_cr:
                s.cr2 = s.gpr[gpr]
            else:
                s.gpr[gpr] = s.cr2
            s.rip += length
            return None
        qualification = cr | (0 if to_cr else 1) << 4 | gpr << 8
        if to_cr:
            value = s.gpr[gpr]
            if cr in (0, 4):
                mask = f[F.CR0_GUEST_HOST_MASK if cr == 0 else F.CR4_GUEST_HOST_MASK]
                shadow = f[F.CR0_READ_SHADOW if cr == 0 else F.CR4_READ_SHADOW]
                if (value ^ shadow) & mask:
                    return self._exit(ExitReason.CR_ACCESS, length=length, qualification=qualification)
                if cr == 0:
                    s.cr0 = (value & ~mask) | (s.cr0 & mask)
                else:
                    s.cr4 = (value & ~mask) | (s.cr4 & mask)
                s.rip += length
                return None
            if cr == 3 and primary & P.CR3_LOAD_EXITING:
                targets = [f[F.CR3_TARGET_VALUE0 + 2 * i] for i in range(min(f[F.CR3_TARGET_COUNT], 4))]
                if value not in targets:
                    return self._exit(ExitReason.CR_ACCESS, length=length, qualification=qualification)
            if cr == 8 and primary & P.CR8_LOAD_EXITING:
                return self._exit(ExitReason.CR_ACCESS, length=length, qualification=qualification)
        else:
            if cr in (0, 4):
                mask = f[F.CR0_GUEST_HOST_MASK if cr == 0 else F.CR4_GUEST_HOST_MASK]
                shadow = f[F.CR0_READ_SHADOW if cr == 0 else F.CR4_READ_SHADOW]
                real = s.cr0 if cr == 0 else s.cr4
                s.gpr[gpr] = (real & ~mask) | (shadow & mask)
                s.rip += length
                return None
            if (cr == 3 and primary & P.CR3_STORE_EXITING) or (cr == 8 and primary & P.CR8_STORE_EXITING):
                return self._exit(ExitReason.CR_ACCESS, length=length, qualification=qualification)
        self.skip_special = ins.ip  # not intercepted: Unicorn executes it
        return None

    def _operand_value(self, ins, op: int) -> int:
        kind = ins.op_kind(op)
        if kind == iced_x86.OpKind.REGISTER:
            return self.cpu.state.gpr[_GPR_NUMBER[ins.op_register(op)]]
        return int.from_bytes(self.guest_memory().read(self._memory_operand_address(ins), 2), "little")

    def _memory_operand_address(self, ins) -> int:
        return _memory_operand(ins).linear_address(self.cpu.state, ins.len)

    # Exceptions (SDM §26.2 exception bitmap; §27.6 / Vol. 3A §6.14 delivery)
    def _exception(
        self, vector: int, error_code: int | None = None, address: int | None = None, qualification: int = 0
    ) -> VmExit | None:
        """A hardware exception of the instruction at RIP; `address`: a #PF's linear address;
        `qualification`: a #DB's, should it exit."""
        if address is not None:
            self.cpu.state.cr2 = address
        return self._raise(Event(vector, (error_code or 0) if vector in ERROR_CODE_VECTORS else None), 0, qualification)

    def _interrupt(self, vector: int, dr6: int, error_code: int) -> VmExit | None:
        """Unicorn raised `vector`: an exception of the instruction at RIP, or INT n / INT3, after
        which RIP is past the instruction the counter saw start.  A #DB (a single step, a
        breakpoint) has the DR6 bits Unicorn set, which an exit reports instead (SDM §28.2.1).
        `error_code`: QEMU's (for a #PF, from the walk of the access that faulted)."""
        s, last = self.cpu.state, self.ctx.counter.last
        ins = self._decoded_at(s.cr3, last, _decode_x86) if last != s.rip else None
        if ins is not None and last + ins.len == s.rip and ins.mnemonic in _SOFTWARE_EVENTS:
            return self._raise(Event(vector, None, _SOFTWARE_EVENTS[ins.mnemonic]), ins.len)
        return self._exception(vector, error_code, qualification=dr6 & _DR6_EXIT_BITS if vector == Vector.DB else 0)

    def _raise(self, event: Event, length: int = 0, qualification: int = 0) -> VmExit | None:
        """An exception exits if the exception bitmap selects it (SDM §26.2; INT n never does),
        reporting the instruction that raised a software one (length, RIP; §28.2.4); otherwise it
        is delivered through the IDT."""
        s = self.cpu.state
        if event.kind != InterruptionType.SOFTWARE_INTERRUPT and self._exception_exits(event, self.cpu.current.fields):
            s.rip -= length
            return self._exception_exit(event, length, qualification)
        return self._deliver(event, length)

    def _exception_exit(self, event: Event, length: int = 0, qualification: int = 0, **vectoring: int) -> VmExit:
        s = self.cpu.state
        if event.vector == Vector.PF and event.kind == InterruptionType.HARDWARE_EXCEPTION:
            qualification, s.cr2 = s.cr2, self.cr2_before_run  # a #PF that exits leaves CR2 alone (§27.1)
        return self._exit(
            ExitReason.EXCEPTION_NMI,
            length=length,
            qualification=qualification,
            intr_info=event.info,
            intr_error_code=event.error_code or 0,
            **vectoring,
        )

    def _exception_exits(self, event: Event, f: dict[int, int]) -> bool:
        if event.vector == Vector.PF:
            hit = (event.error_code or 0) & f[F.PAGE_FAULT_ERROR_CODE_MASK] == f[F.PAGE_FAULT_ERROR_CODE_MATCH]
            return bool(f[F.EXCEPTION_BITMAP] >> 14 & 1) == hit
        return bool(f[F.EXCEPTION_BITMAP] >> event.vector & 1)

    def _deliver(self, event: Event, length: int) -> VmExit | None:
        """Deliver `event` through the IDT (RIP past the instruction of a software event).  An
        exception during delivery exits if the exception bitmap selects it, reporting the event it
        interrupted in the IDT-vectoring information, against the instruction that raised a
        software event (§28.2.3, §28.2.4); otherwise it is escalated (§6.15) and delivered: a
        double fault or triple fault exits directly, without IDT-vectoring information."""
        s, memory, f = self.cpu.state, self.guest_memory(), self.cpu.current.fields
        current, past = event, length  # past: how far RIP is beyond the instruction
        while True:
            try:
                deliver(s, memory, current, self._code_segment)
                return None
            except ept_mod.EptFault as fault:
                s.rip -= past
                return self._ept_exit(fault, access=2, linear=None, **self._vectoring(current, length))
            except X86Exception as exc:
                s.rip -= past  # a fault of the instruction, not a trap after it
                past = 0
                if exc.address is not None:
                    s.cr2 = exc.address  # a #PF (left alone if it exits)
                fault = Event(exc.vector, exc.error_code if exc.vector in ERROR_CODE_VECTORS else None)
                if self._exception_exits(fault, f):
                    return self._exception_exit(fault, **self._vectoring(current, length))
                try:
                    current = escalate(current, fault)
                except TripleFault:
                    return self._exit(ExitReason.TRIPLE_FAULT)
                if current is not fault and self._exception_exits(current, f):
                    return self._exception_exit(current)  # a #DF: no IDT-vectoring information

    @staticmethod
    def _vectoring(event: Event, length: int) -> dict[str, int]:
        """The exit information of an exit during delivery of `event` (SDM §28.2.3, §28.2.4)."""
        return {
            "length": length if event.from_instruction else 0,
            "idt_vectoring_info": event.info,
            "idt_vectoring_error_code": event.error_code or 0,
        }

    def _in_gdt(self, selector: int) -> bool:
        """A selector of a GDT descriptor within the limit (not null, not the LDT)."""
        return bool(selector & ~7) and not selector & 4 and selector | 7 <= self.cpu.state.gdtr_limit

    def _gdt_segment(self, selector: int) -> Segment:
        """The segment a selector loads from the GDT; unusable where it names no GDT descriptor."""
        s, raw = self.cpu.state, 0
        if self._in_gdt(selector):
            raw = int.from_bytes(self.guest_memory().read(s.gdtr_base + (selector & ~7), 8), "little")
        return descriptor_segment(selector, raw)

    def _code_segment(self, selector: int) -> Segment | None:
        return self._gdt_segment(selector) if self._in_gdt(selector) else None

    def _inject(self, injection: tuple[int, int, int]) -> VmExit | None:
        """VM-entry event injection (SDM §27.6): delivered through the IDT, never the bitmap."""
        info, error_code, length = injection
        event = Event(info & 0xFF, error_code if info & INTR_INFO_DELIVER_ERROR_CODE else None, (info >> 8) & 7)
        length = length if event.from_instruction else 0
        self.cpu.state.rip += length
        return self._deliver(event, length)

    # EPT violations (SDM §29.3.3.2, Table 28-7)
    def _memory_fault(self, stop: _Stop) -> VmExit | None:
        access = stop.data["access"]
        linear = stop.data["address"]
        kind = {
            UC.UC_MEM_READ_UNMAPPED: 1,
            UC.UC_MEM_READ_PROT: 1,
            UC.UC_MEM_WRITE_UNMAPPED: 2,
            UC.UC_MEM_WRITE_PROT: 2,
            UC.UC_MEM_FETCH_UNMAPPED: 4,
            UC.UC_MEM_FETCH_PROT: 4,
        }.get(access, 1)
        memory = self.guest_memory()
        try:
            gpa = memory.linear_to_gpa(linear, write=kind == 2, fetch=kind == 4)
        except X86Exception as exc:
            return self._exception(exc.vector, exc.error_code, exc.address)
        except ept_mod.EptFault as fault:
            return self._ept_exit(fault, access=1, linear=linear, in_walk=True)
        try:
            memory.gpa_to_hpa(gpa, kind)
        except ept_mod.EptFault as fault:
            return self._ept_exit(fault, access=kind, linear=linear)
        # EPT allows it now (the hypervisor added the page since this instance mapped memory):
        # map it lazily and let the access run again.
        self.ctx.map_page(gpa)
        return None

    def _ept_exit(
        self, fault: ept_mod.EptFault, access: int, linear: int | None, in_walk: bool = False, **info
    ) -> VmExit:
        if fault.misconfig:
            return self._exit(ExitReason.EPT_MISCONFIG, guest_physical_address=fault.gpa, **info)
        qualification = access | fault.perms << 3
        if linear is not None:
            qualification |= 1 << 7 | (0 if in_walk else 1 << 8)
        return self._exit(
            ExitReason.EPT_VIOLATION,
            qualification=qualification,
            guest_physical_address=fault.gpa,
            guest_linear_address=linear or 0,
            **info,
        )
