"""The snapshot file (docs/snapshot.md): a ZIP archive with a JSON header, L1's memory
(deflate-compressed) and each vCPU's current vmcs12 in KVM's software format."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "nestvmx-snapshot"
VERSION = 1
HEADER, MEMORY = "snapshot.json", "memory.bin"


class SnapshotError(Exception):
    """A file that is not a readable snapshot of this version."""


@dataclass
class Snapshot:
    header: dict[str, Any]  # memory_size, origin (informational), vcpus: [state, ...]
    memory: bytes
    vmcs12: list[bytes | None]  # per vCPU


def _vmcs12_member(index: int) -> str:
    return f"vcpu{index}-vmcs12.bin"


def write_snapshot(path: str | Path, snapshot: Snapshot) -> None:
    header = {"format": FORMAT, "version": VERSION, **snapshot.header}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(HEADER, json.dumps(header, indent=1))
        archive.writestr(MEMORY, snapshot.memory)
        for index, blob in enumerate(snapshot.vmcs12):
            if blob is not None:
                archive.writestr(_vmcs12_member(index), blob)


def read_snapshot(path: str | Path) -> Snapshot:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if HEADER not in names or MEMORY not in names:
                raise SnapshotError(f"{path}: not a nestvmx snapshot (no {HEADER} or {MEMORY})")
            header = json.loads(archive.read(HEADER))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise SnapshotError(f"{path}: not a nestvmx snapshot")
            if header.get("version") != VERSION:
                raise SnapshotError(
                    f"{path}: snapshot format version {header.get('version')!r} is not supported "
                    f"(this nestvmx reads version {VERSION})"
                )
            vcpus = header.get("vcpus")
            if not isinstance(vcpus, list) or not vcpus:
                raise SnapshotError(f"{path}: the header lists no vCPU")
            if archive.getinfo(MEMORY).file_size != header.get("memory_size"):  # checked before inflating
                raise SnapshotError(f"{path}: the memory image size differs from the header's memory_size")
            memory = archive.read(MEMORY)
            vmcs12 = [
                archive.read(_vmcs12_member(i)) if _vmcs12_member(i) in names else None for i in range(len(vcpus))
            ]
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as err:
        raise SnapshotError(f"{path}: not a readable snapshot archive ({err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SnapshotError(f"{path}: the snapshot header is not valid JSON ({err})") from None
    except OSError as err:
        raise SnapshotError(f"{path}: {err.strerror or err}") from None
    if header["memory_size"] != len(memory):
        raise SnapshotError(f"{path}: the memory image size differs from the header's memory_size")
    return Snapshot(header, memory, vmcs12)
