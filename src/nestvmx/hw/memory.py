"""Host physical memory: a bytes-backed address space with bounds checks."""

from __future__ import annotations


class BusError(Exception):
    """An access to host-physical addresses where no memory is."""

    def __init__(self, address: int, size: int) -> None:
        super().__init__(f"no memory at physical {address:#x} (+{size})")
        self.address = address
        self.size = size


class PhysicalMemory:
    """RAM at physical address 0 .. size-1.  Other layers share `buffer` without copying."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % 4096:
            raise ValueError(f"memory size {size:#x} must be a positive multiple of 4 KiB")
        self.size = size
        self.buffer = bytearray(size)

    def window(self, size: int) -> PhysicalMemory:
        """The first `size` bytes, sharing this buffer (e.g. a guest's RAM inside host memory)."""
        view = PhysicalMemory.__new__(PhysicalMemory)
        view.size, view.buffer = min(size, self.size), self.buffer
        return view

    def contains(self, address: int, size: int = 1) -> bool:
        return 0 <= address and address + size <= self.size

    def _check(self, address: int, size: int) -> None:
        if not self.contains(address, size):
            raise BusError(address, size)

    def read(self, address: int, size: int) -> bytes:
        self._check(address, size)
        return bytes(self.buffer[address : address + size])

    def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data))
        self.buffer[address : address + len(data)] = data

    def read_u(self, address: int, size: int) -> int:
        self._check(address, size)
        return int.from_bytes(self.buffer[address : address + size], "little")

    def write_u(self, address: int, size: int, value: int) -> None:
        self._check(address, size)
        self.buffer[address : address + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def read_bus(self, address: int, size: int) -> int:
        """Read as the processor does on the bus: addresses without memory read as all ones."""
        if not self.contains(address, size):
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.buffer[address : address + size], "little")

    def write_bus(self, address: int, size: int, value: int) -> None:
        """Write as the processor does on the bus: writes where no memory is are dropped."""
        if self.contains(address, size):
            self.write_u(address, size, value)
