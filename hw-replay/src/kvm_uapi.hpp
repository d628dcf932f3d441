// The one place hw-replay includes <linux/kvm.h>, made correct for C++.
//
// Debian 12's uapi headers (linux-libc-dev 6.1) declare flexible array members through
// __DECLARE_FLEX_ARRAY, which wraps them in a struct holding an empty struct. In C an empty
// struct has size 0; in C++ it has size 1. So in C++ `sizeof(kvm_cpuid2)` is 12 instead of 8,
// every ioctl number built from such a struct is wrong (KVM_GET_SUPPORTED_CPUID becomes
// 0xc00cae05 instead of 0xc008ae05, and the kernel answers EINVAL), and the arrays sit at the
// wrong offsets (kvm_msrs entries at 16 instead of 8). Linux 6.5+ declares `TYPE NAME[0]`
// under __cplusplus; this header does the same before <linux/kvm.h> is read, and pins every
// size, offset and ioctl number hw-replay uses against the values the C compiler gives
// (docs/kvm-backend.md, "C++ and the uapi headers").
#pragma once

#include <linux/stddef.h>  // defines __DECLARE_FLEX_ARRAY once (include guard _LINUX_STDDEF_H)

#undef __DECLARE_FLEX_ARRAY
// A zero-length array, GCC's C++ form of a flexible array member (as in Linux 6.5+ headers).
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]

#include <linux/kvm.h>

#include <cstddef>

// Structures whose trailing array is declared through __DECLARE_FLEX_ARRAY.
static_assert(sizeof(kvm_cpuid2) == 8 && offsetof(kvm_cpuid2, entries) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40);
static_assert(sizeof(kvm_msrs) == 8 && offsetof(kvm_msrs, entries) == 8);
static_assert(sizeof(kvm_msr_entry) == 16);
static_assert(sizeof(kvm_msr_list) == 4 && offsetof(kvm_msr_list, indices) == 4);
static_assert(sizeof(kvm_xsave) == 4096 && offsetof(kvm_xsave, extra) == 4096);
static_assert(sizeof(kvm_signal_mask) == 4);
static_assert(sizeof(kvm_irq_routing) == 8);

// Structures hw-replay passes by pointer (sizes from the C compiler on x86-64).
static_assert(sizeof(kvm_regs) == 144);
static_assert(sizeof(kvm_sregs) == 312);
static_assert(sizeof(kvm_run) == 2352);
static_assert(offsetof(kvm_run, immediate_exit) == 1 && offsetof(kvm_run, io) == 32);
// KVM_CAP_SYNC_REGS: the valid/dirty masks and struct kvm_sync_regs {regs, sregs, events} in kvm_run.
static_assert(offsetof(kvm_run, kvm_valid_regs) == 288 && offsetof(kvm_run, kvm_dirty_regs) == 296);
static_assert(offsetof(kvm_run, s) == 304 && sizeof(kvm_sync_regs) == 520);
static_assert(offsetof(kvm_sync_regs, sregs) == 144 && offsetof(kvm_sync_regs, events) == 456);
static_assert(sizeof(kvm_xcrs) == 392);
static_assert(sizeof(kvm_lapic_state) == 1024);
static_assert(sizeof(kvm_vcpu_events) == 64);
static_assert(sizeof(kvm_debugregs) == 128);
static_assert(sizeof(kvm_mp_state) == 4);
static_assert(sizeof(kvm_userspace_memory_region) == 32);
static_assert(sizeof(kvm_dirty_log) == 16);
static_assert(sizeof(kvm_device_attr) == 24);
static_assert(sizeof(kvm_guest_debug) == 72);

// Every ioctl number hw-replay issues, as a C translation unit computes it.
static_assert(KVM_GET_API_VERSION == 0xae00UL && KVM_CREATE_VM == 0xae01UL);
static_assert(KVM_GET_MSR_INDEX_LIST == 0xc004ae02UL);
static_assert(KVM_CHECK_EXTENSION == 0xae03UL && KVM_GET_VCPU_MMAP_SIZE == 0xae04UL);
static_assert(KVM_GET_SUPPORTED_CPUID == 0xc008ae05UL && KVM_SET_CPUID2 == 0x4008ae90UL);
static_assert(KVM_CREATE_VCPU == 0xae41UL && KVM_RUN == 0xae80UL);
static_assert(KVM_GET_DIRTY_LOG == 0x4010ae42UL);
static_assert(KVM_SET_USER_MEMORY_REGION == 0x4020ae46UL && KVM_SET_TSS_ADDR == 0xae47UL);
static_assert(KVM_CREATE_IRQCHIP == 0xae60UL);
static_assert(KVM_GET_REGS == 0x8090ae81UL && KVM_SET_REGS == 0x4090ae82UL);
static_assert(KVM_GET_SREGS == 0x8138ae83UL && KVM_SET_SREGS == 0x4138ae84UL);
static_assert(KVM_GET_MSRS == 0xc008ae88UL && KVM_SET_MSRS == 0x4008ae89UL);
static_assert(KVM_GET_LAPIC == 0x8400ae8eUL && KVM_SET_LAPIC == 0x4400ae8fUL);
static_assert(KVM_GET_MP_STATE == 0x8004ae98UL && KVM_SET_MP_STATE == 0x4004ae99UL);
static_assert(KVM_GET_VCPU_EVENTS == 0x8040ae9fUL && KVM_SET_VCPU_EVENTS == 0x4040aea0UL);
static_assert(KVM_GET_DEBUGREGS == 0x8080aea1UL && KVM_SET_DEBUGREGS == 0x4080aea2UL);
static_assert(KVM_GET_XSAVE == 0x9000aea4UL && KVM_SET_XSAVE == 0x5000aea5UL);
static_assert(KVM_GET_XSAVE2 == 0x9000aecfUL);
static_assert(KVM_GET_XCRS == 0x8188aea6UL && KVM_SET_XCRS == 0x4188aea7UL);
static_assert(KVM_SET_DEVICE_ATTR == 0x4018aee1UL && KVM_HAS_DEVICE_ATTR == 0x4018aee3UL);
static_assert(KVM_SET_GUEST_DEBUG == 0x4048ae9bUL);
