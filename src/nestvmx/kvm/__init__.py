"""The L0 hypervisor, structured and named after Linux KVM's arch/x86/kvm/vmx/."""
