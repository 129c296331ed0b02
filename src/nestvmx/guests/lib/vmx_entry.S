/* Entering the guest and coming back (the pattern of KVM's vmenter.S, much reduced).
 *   u64 vmx_run(int launch, struct guest_regs *g)
 * saves L1's callee-saved registers, sets HOST_RSP, loads the guest GPRs from *g and executes
 * VMLAUNCH or VMRESUME.  On a VM exit the processor resumes at vmx_exit_point (HOST_RIP) with
 * RSP = HOST_RSP: the guest GPRs are stored into *g and vmx_run returns 0.  If the instruction
 * fails (VMfail), vmx_run returns RFLAGS with bit 63 set.  HOST_RSP is written only when it
 * changes, as KVM's vmx_vcpu_run does (it caches the value it last wrote, per CPU: the CPU is
 * named by its TR selector, 0x18 + 16 * cpu, as in vmx.h). */
    .data
    .balign 8
host_rsp_written:
    .fill 32, 8, 0                  /* VMX_MAX_CPUS */
    .text
    .globl vmx_run, vmx_exit_point
vmx_run:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rsi                      /* g, found again at (%rsp) after the exit */
    movl %edi, %ebx                 /* launch flag: keep it in a callee-saved register */
    str %eax
    subl $0x18, %eax
    shrl $4, %eax
    andl $31, %eax                  /* a TR outside the table shares a slot: only a cache */
    leaq host_rsp_written(%rip), %rdx
    leaq (%rdx,%rax,8), %rdx
    cmpq (%rdx), %rsp
    je 4f
    movq %rsp, (%rdx)
    movq $0x6c14, %rax              /* HOST_RSP */
    vmwrite %rsp, %rax
4:
    movq 0x00(%rsi), %rax
    movq 0x08(%rsi), %rcx
    movq 0x10(%rsi), %rdx
    movq 0x28(%rsi), %rbp
    movq 0x38(%rsi), %rdi
    movq 0x40(%rsi), %r8
    movq 0x48(%rsi), %r9
    movq 0x50(%rsi), %r10
    movq 0x58(%rsi), %r11
    movq 0x60(%rsi), %r12
    movq 0x68(%rsi), %r13
    movq 0x70(%rsi), %r14
    movq 0x78(%rsi), %r15
    testl %ebx, %ebx
    movq 0x18(%rsi), %rbx
    movq 0x30(%rsi), %rsi
    jz 1f
    vmlaunch
    jmp 2f
1:  vmresume
2:  pushfq                          /* VMfail: return the flags */
    popq %rax
    btsq $63, %rax
    addq $8, %rsp
    jmp 3f

vmx_exit_point:
    pushq %rax
    movq 8(%rsp), %rax              /* g */
    popq 0x00(%rax)
    movq %rcx, 0x08(%rax)
    movq %rdx, 0x10(%rax)
    movq %rbx, 0x18(%rax)
    movq %rbp, 0x28(%rax)
    movq %rsi, 0x30(%rax)
    movq %rdi, 0x38(%rax)
    movq %r8, 0x40(%rax)
    movq %r9, 0x48(%rax)
    movq %r10, 0x50(%rax)
    movq %r11, 0x58(%rax)
    movq %r12, 0x60(%rax)
    movq %r13, 0x68(%rax)
    movq %r14, 0x70(%rax)
    movq %r15, 0x78(%rax)
    addq $8, %rsp
    xorl %eax, %eax
3:  popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
