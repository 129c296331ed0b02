"""nestvmx: an executable model of Intel VMX nested virtualization with VMCS shadowing."""

__version__ = "0.1.0"

from nestvmx.api import VM, Host, RunResult  # noqa: E402

__all__ = ["Host", "RunResult", "VM", "__version__"]
