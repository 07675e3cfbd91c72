// Copyright (c) 2025 the moteseal authors. MIT licence.
#include "shared/runtime/interrupt_char.h"

void mp_hal_get_random(size_t n, uint8_t *buf);

// Native (viper) code is written to RAM and then run: the M3 has no caches,
// but keep the compiler from reordering the stores past the call.
#define MP_HAL_CLEAN_DCACHE(addr, len) __asm volatile ("dsb\n isb" ::: "memory")

// No pins: keeps py/mphal.h from pulling in extmod/virtpin.h (not in the sdist).
#define mp_hal_pin_obj_t int
