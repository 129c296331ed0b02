"""The cost model: modeled cycles = hardware events x cost + L0 software cost per handler type
+ L1 handler cost per reflected exit + guest instructions x CPI.  Costs are data
(measure/costs/*.toml), each number with its source or marked as an estimate."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

COSTS_DIR = Path(__file__).parent / "costs"
HARDWARE_EVENTS = (
    "vmexit",
    "vmentry",
    "vmread",
    "vmwrite",
    "shadow_vmread",
    "shadow_vmwrite",
    "vmptrld",
    "vmclear",
    "invept",
    "ept_walk",
)
L0_HANDLERS = (
    "simple_exit",
    "emulated_vmread",
    "emulated_vmwrite",
    "nested_vmentry",
    "nested_vmexit",
    "ept02_fill",
    "vmx_instruction",
    "shadow_sync_field",
)
_VMX_INSTRUCTION_EXITS = ("VMXON", "VMXOFF", "VMCLEAR", "VMPTRLD", "VMPTRST", "INVEPT", "INVVPID")
_PROVENANCE = ("source", "estimate", "calibrated")


class CostModelError(Exception):
    """A cost file that cannot be used (missing numbers, numbers without a source or estimate)."""


@dataclass(frozen=True)
class CostModel:
    name: str
    description: str
    frequency_ghz: float
    hardware: dict[str, float]
    l0_software: dict[str, float]
    l1_handler: float
    l1_inflation: float
    cpi: float

    @classmethod
    def load(cls, name_or_path: str | Path) -> CostModel:
        """A built-in model by name (turtles2010, haswell) or a TOML file of the same form."""
        path = Path(name_or_path)
        if not path.suffix:
            path = COSTS_DIR / f"{name_or_path}.toml"
            if not path.exists():
                known = ", ".join(sorted(p.stem for p in COSTS_DIR.glob("*.toml")))
                raise CostModelError(f"unknown cost model {name_or_path!r} (known: {known})")
        try:
            data = tomllib.loads(path.read_text())
        except OSError as err:
            raise CostModelError(f"cannot read {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise CostModelError(f"{path}: not valid TOML: {err}") from None
        return cls._from_data(data, str(path))

    @classmethod
    def _from_data(cls, data: dict, where: str) -> CostModel:
        def number(section: str, key: str, unit: str = "cycles") -> float:
            entry = data.get(section, {}).get(key)
            if not isinstance(entry, dict) or not isinstance(entry.get(unit), int | float):
                raise CostModelError(f"{where}: [{section}] {key} needs a number `{unit}`")
            if not any(isinstance(entry.get(p), str) and entry[p] for p in _PROVENANCE):
                raise CostModelError(f"{where}: [{section}] {key} has no source, estimate or calibration note")
            if entry[unit] < 0:
                raise CostModelError(f"{where}: [{section}] {key} is negative")
            return float(entry[unit])

        if not isinstance(data.get("name"), str):
            raise CostModelError(f"{where}: needs a `name`")
        return cls(
            name=data["name"],
            description=str(data.get("description", "")),
            frequency_ghz=float(data.get("frequency_ghz", 1.0)),
            hardware={k: number("hardware", k) for k in HARDWARE_EVENTS},
            l0_software={k: number("l0_software", k) for k in L0_HANDLERS},
            l1_handler=number("l1_software", "handler"),
            l1_inflation=number("l1_software", "inflation", "factor"),
            cpi=number("guest", "cpi"),
        )

    def handler_counts(self, stats: dict) -> dict[str, int]:
        """How many times L0 ran each kind of handler, from the statistics of a run."""
        by_reason, nested = stats["l0_exits"]["by_reason"], stats["nested"]
        entries = by_reason.get("VMLAUNCH", 0) + by_reason.get("VMRESUME", 0)
        counts = {
            "emulated_vmread": by_reason.get("VMREAD", 0),
            "emulated_vmwrite": by_reason.get("VMWRITE", 0),
            "nested_vmentry": nested["vmentries"],
            "nested_vmexit": nested["vmexits"],
            "ept02_fill": nested.get("ept02_fills", 0),
            "vmx_instruction": sum(by_reason.get(r, 0) for r in _VMX_INSTRUCTION_EXITS) + entries - nested["vmentries"],
            "shadow_sync_field": stats["shadow"]["fields_copied"],
        }
        special = sum(v for k, v in counts.items() if k not in ("nested_vmentry", "shadow_sync_field"))
        counts["simple_exit"] = max(0, stats["l0_exits"]["total"] - special - nested["vmentries"])
        return counts

    def breakdown(self, stats: dict) -> dict[str, float]:
        """Modeled cycles by component: L2 and L1 guest work, L1's handlers, hardware transitions,
        L0's software, and shadow VMCS syncs."""
        events = stats.get("events", {})
        handlers = self.handler_counts(stats)
        sync = handlers.pop("shadow_sync_field") * self.l0_software["shadow_sync_field"]
        return {
            "l2": stats["instructions"]["l2"] * self.cpi,
            "l1": stats["instructions"]["l1"] * self.cpi,
            "l1_handler": stats["nested"]["vmexits"] * self.l1_handler * self.l1_inflation,
            "hardware": sum(events.get(k, 0) * c for k, c in self.hardware.items()),
            "l0": sum(n * self.l0_software[k] for k, n in handlers.items()),
            "shadow_sync": sync,
        }

    def cycles(self, stats: dict) -> int:
        return round(sum(self.breakdown(stats).values()))


def default_cost_model(cpu: str) -> str:
    """The calibration era that matches a processor model: Haswell's, or the pre-shadowing era."""
    return "haswell" if cpu == "haswell" else "turtles2010"
