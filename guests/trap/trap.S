/* The loader's ring-0 trap handler (docs/guest-abi.md §2.1), placed at BATON_GPA_TRAP with
 * one IDT gate per exception vector 0..31.
 *
 * #GP from ring 3 with error code 0 at an IN or OUT: the CPU refused the port access (PVM
 * runs ring 3 with IOPL 0 whatever RFLAGS says). The handler performs the same access at
 * ring 0, where it is an ordinary I/O exit on every KVM, advances RIP past the instruction
 * and returns with IRETQ. Every register but the IN destination, and RFLAGS, come back as
 * they were. On VT-x, SVM and in the simulator (IOPL=3 honoured) it is never entered.
 *
 * Anything else (another vector, a #GP that is not such an IN/OUT, an encoding the decoder
 * does not know) writes a struct baton_fault at BATON_GPA_FAULT_RECORD and then writes the
 * vector to BATON_PORT_FAULT forever: the host reports it and the run is over.
 *
 * Ring-0 code is emulated one instruction at a time on PVM (about 0.5 us each), so the
 * common forms (EC..EF: IN/OUT with the port in DX, no prefix) take the short path. */

#define PORT_FAULT 0x51C      /* BATON_PORT_FAULT */
#define FAULT_RECORD 0x5000   /* BATON_GPA_FAULT_RECORD: struct baton_fault */
#define VECTORS 32

  .code64

/* The header the loader reads: magic, vector count, the fault port and record this code
 * uses, and the offset of each vector's entry from the start of the blob. */
  .section .text.trap_header, "ax"
trap_header:
  .ascii "BTNTRAP1"
  .short VECTORS
  .short PORT_FAULT
  .long FAULT_RECORD
  .short v0 - trap_header, v1 - trap_header, v2 - trap_header, v3 - trap_header
  .short v4 - trap_header, v5 - trap_header, v6 - trap_header, v7 - trap_header
  .short v8 - trap_header, v9 - trap_header, v10 - trap_header, v11 - trap_header
  .short v12 - trap_header, gp_entry - trap_header, v14 - trap_header, v15 - trap_header
  .short v16 - trap_header, v17 - trap_header, v18 - trap_header, v19 - trap_header
  .short v20 - trap_header, v21 - trap_header, v22 - trap_header, v23 - trap_header
  .short v24 - trap_header, v25 - trap_header, v26 - trap_header, v27 - trap_header
  .short v28 - trap_header, v29 - trap_header, v30 - trap_header, v31 - trap_header

  .text

/* #GP. Stack: error code 0(%rsp), RIP 8, CS 16, RFLAGS 24, RSP 32, SS 40.
 * A refused port access has error code 0. It needs no check of the CPL it came from: IN and
 * OUT never raise #GP at CPL 0, and they have no memory operand that could, so a #GP(0) at
 * an IN or OUT always means "IOPL < CPL". Each instruction here costs about 0.8 us on PVM,
 * so the forms are tested in the order of their frequency in the guests. */
gp_entry:
  cmpq $0, (%rsp)
  jne gp_fatal
  pushq %rcx
  pushq %rsi                  /* now: error 16, RIP 24 */
  movq 24(%rsp), %rsi
  movzbl (%rsi), %ecx
  cmpb $0xEE, %cl             /* out %al,(%dx): console */
  je out8
  cmpb $0xED, %cl             /* in (%dx),%eax: input */
  je in32
  cmpb $0xEF, %cl             /* out %eax,(%dx): results, sync points, exit */
  je out32
  cmpb $0xEC, %cl             /* in (%dx),%al */
  je in8
  jmp gp_slow
out32:
  outl %eax, %dx
  jmp done1
out8:
  outb %al, %dx
  jmp done1
in32:
  inl %dx, %eax
  jmp done1
in8:
  inb %dx, %al
done1:
  incq 24(%rsp)               /* past the one-byte instruction */
  popq %rsi
  popq %rcx
  addq $8, %rsp               /* the error code */
  iretq

/* The other forms: an optional 0x66 prefix, then E4..E7 (port imm8) or EC..EF (port DX).
 * RCX = first byte, RSI = RIP. */
gp_slow:
  pushq %rdx
  pushq %r8
  pushq %r9                   /* now: error 40, RIP 48 */
  movl $4, %r9d               /* operand size of the eAX forms */
  cmpb $0x66, %cl
  jne 1f
  movl $2, %r9d
  incq %rsi
  movzbl (%rsi), %ecx
1:
  movl %ecx, %r8d
  andl $0xF4, %r8d            /* E4..E7 and EC..EF, nothing else, give 0xE4 */
  cmpl $0xE4, %r8d
  jne slow_fatal
  testb $0x08, %cl
  jnz 2f
  movzbl 1(%rsi), %edx        /* E4..E7: the port is the immediate byte */
  incq %rsi
2:
  incq %rsi                   /* RSI = the next instruction */
  movq %rsi, 48(%rsp)
  testb $1, %cl
  jnz 3f
  movl $1, %r9d               /* even opcodes move a byte */
3:
  testb $2, %cl               /* E6 E7 EE EF write */
  jnz slow_out
  cmpl $1, %r9d
  je 4f
  cmpl $2, %r9d
  je 5f
  inl %dx, %eax
  jmp slow_done
4:
  inb %dx, %al
  jmp slow_done
5:
  inw %dx, %ax
  jmp slow_done
slow_out:
  cmpl $1, %r9d
  je 6f
  cmpl $2, %r9d
  je 7f
  outl %eax, %dx
  jmp slow_done
6:
  outb %al, %dx
  jmp slow_done
7:
  outw %ax, %dx
slow_done:
  popq %r9
  popq %r8
  popq %rdx
  popq %rsi
  popq %rcx
  addq $8, %rsp
  iretq

slow_fatal:
  popq %r9
  popq %r8
  popq %rdx
  popq %rsi
  popq %rcx
gp_fatal:
  pushq $13
  jmp fatal

/* Every other vector: push a zero error code where the CPU pushes none, then the vector. */
.macro noerr v
v\v:
  pushq $0
  pushq $\v
  jmp fatal
.endm
.macro witherr v
v\v:
  pushq $\v
  jmp fatal
.endm
  noerr 0
  noerr 1
  noerr 2
  noerr 3
  noerr 4
  noerr 5
  noerr 6
  noerr 7
  witherr 8
  noerr 9
  witherr 10
  witherr 11
  witherr 12
  witherr 14
  noerr 15
  noerr 16
  witherr 17
  noerr 18
  noerr 19
  noerr 20
  witherr 21
  noerr 22
  noerr 23
  noerr 24
  noerr 25
  noerr 26
  noerr 27
  noerr 28
  witherr 29
  witherr 30
  noerr 31

/* Stack: vector 0(%rsp), error 8, RIP 16, CS 24, RFLAGS 32, RSP 40, SS 48. Fills the
 * struct baton_fault and reports the vector on the fault port, forever. */
fatal:
  movq %rax, FAULT_RECORD + 0x40
  movq %rcx, FAULT_RECORD + 0x48
  movq %rdx, FAULT_RECORD + 0x50
  movq %rsi, FAULT_RECORD + 0x58
  xorl %ecx, %ecx
1:
  movq (%rsp,%rcx,8), %rax    /* vector, error, RIP, CS, RFLAGS, RSP, SS */
  movq %rax, FAULT_RECORD(,%rcx,8)
  incl %ecx
  cmpl $7, %ecx
  jne 1b
  movq %cr2, %rax
  movq %rax, FAULT_RECORD + 0x38
  movl FAULT_RECORD, %eax
  movl $PORT_FAULT, %edx
2:
  outl %eax, %dx
  jmp 2b

  .section .note.GNU-stack, "", @progbits
