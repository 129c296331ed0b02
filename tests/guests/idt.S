/* IDT stubs for the test guests: each vector pushes a dummy error code where the CPU does not,
 * then its number, and jumps to a common path that saves the GPRs and calls
 * handle_trap(struct trap_frame *); the handler may change the saved RIP. */
    .text
    .macro stub vec, has_ec
    .globl trap_stub_\vec
trap_stub_\vec:
    .if \has_ec == 0
    pushq $0
    .endif
    pushq $\vec
    jmp trap_common
    .endm

    stub 0, 0
    stub 3, 0
    stub 6, 0
    stub 8, 1
    stub 11, 1
    stub 13, 1
    stub 14, 1
    stub 32, 0

trap_common:
    pushq %rax; pushq %rcx; pushq %rdx; pushq %rbx; pushq %rbp; pushq %rsi; pushq %rdi
    pushq %r8; pushq %r9; pushq %r10; pushq %r11; pushq %r12; pushq %r13; pushq %r14; pushq %r15
    movq %rsp, %rdi
    call handle_trap
    popq %r15; popq %r14; popq %r13; popq %r12; popq %r11; popq %r10; popq %r9; popq %r8
    popq %rdi; popq %rsi; popq %rbp; popq %rbx; popq %rdx; popq %rcx; popq %rax
    addq $16, %rsp
    iretq
