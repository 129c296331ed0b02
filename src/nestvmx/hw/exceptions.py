"""Exceptions the processor raises while executing an instruction (SDM Vol. 3A §6.15)."""

from __future__ import annotations

import enum


class Vector(enum.IntEnum):
    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19
    VE = 20
    CP = 21


# Exceptions that push an error code (SDM Vol. 3A Table 6-1).
ERROR_CODE_VECTORS = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC, Vector.CP})
_CONTRIBUTORY = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})


def double_fault_class(first: int, second: int) -> bool:
    """Whether exception `second`, raised while delivering exception `first`, becomes a double
    fault (SDM Vol. 3A §6.15, Table 6-5)."""
    if first == Vector.DF:
        return True
    if first == Vector.PF:
        return second == Vector.PF or second in _CONTRIBUTORY
    return first in _CONTRIBUTORY and second in _CONTRIBUTORY


class X86Exception(Exception):
    """A fault raised by the instruction being executed; the instruction has no other effect."""

    def __init__(self, vector: Vector, error_code: int | None = None, address: int | None = None) -> None:
        self.vector = Vector(vector)
        self.error_code = error_code
        self.address = address  # the faulting linear address of a #PF (what CR2 receives)
        text = f"#{self.vector.name}" + (f"({error_code:#x})" if error_code is not None else "")
        super().__init__(text)
