"""Loading the L1 program into guest memory: ELF64 by its program headers, or a flat binary."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

PLATFORM_RESERVED = 0x10000  # page tables, GDT and TSS of the platform live below this
DEFAULT_LOAD_ADDRESS = 0x100000


class ProgramError(Exception):
    """The program cannot be loaded (malformed, too large, out of range)."""


@dataclass(frozen=True)
class LoadedProgram:
    entry: int
    segments: list[tuple[int, bytes]]  # (guest-physical address, bytes incl. zero fill)
    stack_top: int | None = None  # from the ELF's own stack, when it names one


def parse_program(data: bytes, load_address: int | None, memory_size: int) -> LoadedProgram:
    """An ELF64 x86-64 executable, or a flat binary started at its first byte."""
    if data[:4] == b"\x7fELF":
        program = _parse_elf(data)
    else:
        if not data:
            raise ProgramError("the program is empty")
        address = DEFAULT_LOAD_ADDRESS if load_address is None else load_address
        program = LoadedProgram(address, [(address, data)])
    for address, blob in program.segments:
        if address < PLATFORM_RESERVED:
            raise ProgramError(f"segment at {address:#x} overlaps the platform area below {PLATFORM_RESERVED:#x}")
        if address + len(blob) > memory_size:
            raise ProgramError(
                f"segment {address:#x}-{address + len(blob):#x} does not fit in {memory_size >> 20} MiB of memory"
            )
    return program


def _parse_elf(data: bytes) -> LoadedProgram:
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise ProgramError("not an x86-64 ELF64 program")
        if elf["e_type"] != "ET_EXEC":
            raise ProgramError(f"ELF type {elf['e_type']} is not an executable (link it with -static)")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            body = seg.data()
            if len(body) != seg["p_filesz"]:
                raise ProgramError("the ELF file is truncated")
            segments.append((seg["p_paddr"] or seg["p_vaddr"], body + bytes(seg["p_memsz"] - seg["p_filesz"])))
        if not segments:
            raise ProgramError("the ELF file has no loadable segment")
        return LoadedProgram(elf["e_entry"], segments)
    except ELFError as err:
        raise ProgramError(f"malformed ELF file: {err}") from None
    except (ValueError, KeyError, IndexError, OSError) as err:
        raise ProgramError(f"malformed ELF file: {err}") from None


def read_program(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ProgramError(f"cannot read {path}: {err.strerror}") from None
