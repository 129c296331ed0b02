"""Architecture facts of Intel VMX, as data: VMCS fields, exit reasons, errors, controls, MSRs."""

from nestvmx.arch.controls import (
    ControlKind,
    EntryCtls,
    ExitCtls,
    InterruptionType,
    PinBased,
    PrimaryCtls,
    SecondaryCtls,
    TertiaryCtls,
)
from nestvmx.arch.errors import VmxError
from nestvmx.arch.exit_reasons import ExitReason, exit_reason_name
from nestvmx.arch.fields import (
    FIELD_BY_ENCODING,
    FIELD_BY_NAME,
    VMCS_FIELDS,
    Access,
    Field,
    FieldType,
    FieldWidth,
    VmcsField,
    decode_encoding,
    lookup,
)
from nestvmx.arch.msr import Msr

__all__ = [
    "Access",
    "ControlKind",
    "EntryCtls",
    "ExitCtls",
    "ExitReason",
    "FIELD_BY_ENCODING",
    "FIELD_BY_NAME",
    "FieldType",
    "FieldWidth",
    "InterruptionType",
    "Msr",
    "PinBased",
    "PrimaryCtls",
    "SecondaryCtls",
    "TertiaryCtls",
    "VMCS_FIELDS",
    "VmcsField",
    "VmxError",
    "Field",
    "decode_encoding",
    "exit_reason_name",
    "lookup",
]
