// moteseal qemu port: stdio over the CMSDK APB UART0 of the MPS2 AN385
// (0x40004000), millisecond ticks from SysTick at the board's 25 MHz, and a
// stand-in random source.
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include "py/mphal.h"
#include "py/runtime.h"
#include "py/stream.h"

typedef struct {
    volatile uint32_t DATA;
    volatile uint32_t STATE;    // bit 0: TX full, bit 1: RX full
    volatile uint32_t CTRL;     // bit 0: TX enable, bit 1: RX enable
    volatile uint32_t INTSTATUS;
    volatile uint32_t BAUDDIV;
} cmsdk_uart_t;

#define UART0 ((cmsdk_uart_t *)0x40004000)

void uart_init(void) {
    UART0->BAUDDIV = 16;
    UART0->CTRL = 3;
}

void uart_tx_strn(const char *buf, size_t len) {
    for (size_t i = 0; i < len; ++i) {
        while (UART0->STATE & 1) {
        }
        UART0->DATA = (uint8_t)buf[i];
    }
}

uintptr_t mp_hal_stdio_poll(uintptr_t poll_flags) {
    if ((poll_flags & MP_STREAM_POLL_RD) && (UART0->STATE & 2)) {
        return MP_STREAM_POLL_RD;
    }
    return 0;
}

int mp_hal_stdin_rx_chr(void) {
    while (!(UART0->STATE & 2)) {
    }
    return UART0->DATA & 0xff;
}

mp_uint_t mp_hal_stdout_tx_strn(const char *str, size_t len) {
    uart_tx_strn(str, len);
    return len;
}

// ---- ticks ----------------------------------------------------------------

#define CPU_HZ 25000000u
#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)

static volatile uint32_t ticks_ms_count;

void ticks_init(void) {
    SYST_CVR = 0;
    SYST_RVR = CPU_HZ / 1000 - 1;
    SYST_CSR = 7; // enable, interrupt, processor clock
}

void SysTick_Handler(void) {
    ticks_ms_count++;
}

mp_uint_t mp_hal_ticks_ms(void) {
    return ticks_ms_count;
}

mp_uint_t mp_hal_ticks_us(void) {
    uint32_t ms, cvr;
    do {
        ms = ticks_ms_count;
        cvr = SYST_CVR;
    } while (ms != ticks_ms_count);
    return ms * 1000 + (SYST_RVR - cvr) / (CPU_HZ / 1000000);
}

mp_uint_t mp_hal_ticks_cpu(void) {
    return ticks_ms_count * (CPU_HZ / 1000) + (SYST_RVR - SYST_CVR);
}

void mp_hal_delay_ms(mp_uint_t ms) {
    mp_uint_t start = mp_hal_ticks_ms();
    while (mp_hal_ticks_ms() - start < ms) {
        mp_handle_pending(true);
    }
}

void mp_hal_delay_us(mp_uint_t us) {
    mp_uint_t start = mp_hal_ticks_us();
    while (mp_hal_ticks_us() - start < us) {
    }
}

// Not a source of secrets: the board has no TRNG. xorshift32 seeded from the
// cycle counter is enough for os.urandom in tests, which pass fixed keys
// wherever the output matters.
static uint32_t rng_state;

void mp_hal_get_random(size_t n, uint8_t *buf) {
    if (rng_state == 0) {
        rng_state = mp_hal_ticks_cpu() | 1;
    }
    for (size_t i = 0; i < n; ++i) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        buf[i] = rng_state >> 24;
    }
}
