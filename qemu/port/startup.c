// moteseal qemu port: Cortex-M3 vector table, reset handler, SysTick and
// fault reporting, and ARM semihosting exit (qemu runs with -semihosting).
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include <stdint.h>
#include <stddef.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;
extern int main(void);
void uart_init(void);
void uart_tx_strn(const char *buf, size_t len);
void ticks_init(void);
void SysTick_Handler(void);

static void put_str(const char *s) {
    size_t n = 0;
    while (s[n]) {
        n++;
    }
    uart_tx_strn(s, n);
}

static void put_hex(uint32_t v) {
    char buf[11] = "0x";
    for (int i = 0; i < 8; i++) {
        buf[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 15];
    }
    buf[10] = 0;
    put_str(buf);
}

// SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit, or RunTimeErrorUnknown.
__attribute__((noreturn)) void semihosting_exit(int status) {
    uint32_t reason = status == 0 ? 0x20026 : 0x20023;
    register uint32_t r0 __asm__("r0") = 0x18;
    register uint32_t r1 __asm__("r1") = reason;
    __asm volatile ("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    for (;;) {
    }
}

void exit(int status) {
    semihosting_exit(status);
}

void abort(void) {
    put_str("FATAL: abort\n");
    semihosting_exit(1);
}

__attribute__((naked, noreturn)) void Reset_Handler(void) {
    __asm volatile ("ldr r0, =_estack\n mov sp, r0");
    for (uint32_t *src = &_sidata, *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    uart_init();
    ticks_init();
    main();
    semihosting_exit(0);
}

// Prints the stacked pc/lr and the fault status, then stops qemu with an error.
void fault_report(uint32_t *sp, uint32_t ipsr) {
    put_str("\nFATAL: fault ");
    put_hex(ipsr);
    put_str(" pc=");
    put_hex(sp[6]);
    put_str(" lr=");
    put_hex(sp[5]);
    put_str(" cfsr=");
    put_hex(*(volatile uint32_t *)0xE000ED28);
    put_str(" hfsr=");
    put_hex(*(volatile uint32_t *)0xE000ED2C);
    put_str("\n");
    semihosting_exit(1);
}

__attribute__((naked)) void Fault_Handler(void) {
    #if defined(__thumb2__)
    __asm volatile (
        "tst lr, #4\n"
        "ite eq\n"
        "mrseq r0, msp\n"
        "mrsne r0, psp\n"
        "mrs r1, ipsr\n"
        "b fault_report\n"
        );
    #else
    // ARMv6-M (the CPU=cortex-m0 build): no IT, no TST with an immediate.
    __asm volatile (
        "movs r0, #4\n"
        "mov r1, lr\n"
        "tst r0, r1\n"
        "beq 1f\n"
        "mrs r0, psp\n"
        "b 2f\n"
        "1: mrs r0, msp\n"
        "2: mrs r1, ipsr\n"
        "ldr r2, =fault_report\n"
        "bx r2\n"
        );
    #endif
}

const uint32_t isr_vector[] __attribute__((section(".isr_vector"), used)) = {
    (uint32_t)&_estack,
    (uint32_t)&Reset_Handler,
    (uint32_t)&Fault_Handler, // NMI
    (uint32_t)&Fault_Handler, // HardFault
    (uint32_t)&Fault_Handler, // MemManage
    (uint32_t)&Fault_Handler, // BusFault
    (uint32_t)&Fault_Handler, // UsageFault
    0, 0, 0, 0,
    (uint32_t)&Fault_Handler, // SVC
    (uint32_t)&Fault_Handler, // DebugMon
    0,
    (uint32_t)&Fault_Handler, // PendSV
    (uint32_t)&SysTick_Handler,
};
