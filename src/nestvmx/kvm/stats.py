"""Counters of one run, and the statistics object of the design's contract."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nestvmx.arch.exit_reasons import exit_reason_name


@dataclass
class RunStats:
    exits_from_l1: Counter[str] = field(default_factory=Counter)
    exits_from_l2: Counter[str] = field(default_factory=Counter)
    nested_vmentries: int = 0
    nested_vmexits: int = 0
    ept02_fills: int = 0
    shadow_enabled: bool = False
    copies_to_shadow: int = 0
    copies_from_shadow: int = 0
    fields_copied: int = 0
    shadow_vmcs_allocated: int = 0
    shadow_vmcs_live: int = 0
    exits: int = 0  # all of the above

    def count_exit(self, basic_reason: int, from_l2: bool) -> None:
        (self.exits_from_l2 if from_l2 else self.exits_from_l1)[exit_reason_name(basic_reason)] += 1
        self.exits += 1

    @classmethod
    def merged(cls, parts: list[RunStats]) -> RunStats:
        """The VM's totals over its vCPUs."""
        total = cls(shadow_enabled=parts[0].shadow_enabled)
        for part in parts:
            for name, value in vars(part).items():
                if not isinstance(value, bool):
                    setattr(total, name, getattr(total, name) + value)
        return total

    def as_dict(self, instructions_l1: int, instructions_l2: int, events: dict[str, int]) -> dict:
        """The counters of the statistics contract (for the VM, or one vCPU)."""
        by_reason = self.exits_from_l1 + self.exits_from_l2
        return {
            "l0_exits": {
                "total": self.exits,
                "from_l1": sum(self.exits_from_l1.values()),
                "from_l2": sum(self.exits_from_l2.values()),
                "by_reason": dict(sorted(by_reason.items())),
            },
            "nested": {
                "vmentries": self.nested_vmentries,
                "vmexits": self.nested_vmexits,
                "ept02_fills": self.ept02_fills,
            },
            "shadow": {
                "enabled": self.shadow_enabled,
                "vmread": events.get("shadow_vmread", 0),  # served by the processor without an exit
                "vmwrite": events.get("shadow_vmwrite", 0),
                "copies_to_shadow": self.copies_to_shadow,
                "copies_from_shadow": self.copies_from_shadow,
                "fields_copied": self.fields_copied,
                "vmcs_allocated": self.shadow_vmcs_allocated,
                "vmcs_live": self.shadow_vmcs_live,
            },
            "instructions": {"l1": instructions_l1, "l2": instructions_l2},
            "events": dict(sorted(events.items())),  # the processor's hardware events, for the cost model
        }
