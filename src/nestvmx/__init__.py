"""nestvmx: an executable model of Intel VMX nested virtualization with VMCS shadowing."""

__version__ = "0.1.0"
