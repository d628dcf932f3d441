/* The entry point of every baton guest. The loader enters here in 64-bit mode with RDI =
 * the boot page and RSP = the top of the stack (16-byte aligned); see docs/guest-abi.md. */
  .section .text.start, "ax"
  .globl _start
  .type _start, @function
_start:
  xorl %ebp, %ebp
  andq $-16, %rsp
  call baton_entry          /* baton_entry(const struct baton_boot* boot); never returns */
1:
  ud2                       /* unreachable: stop hard if it ever returns */
  jmp 1b
  .size _start, . - _start

  .section .note.GNU-stack, "", @progbits
