// mbedtls configuration of the qemu lane's TLS firmware (`make TLS=1`,
// qemu_fw.build(tls=True)): what a bare-metal board (rp2, stm32) builds,
// MicroPython's extmod/mbedtls/mbedtls_config_common.h with
// MICROPY_MBEDTLS_CONFIG_BARE_METAL, so every mbedtls allocation is
// m_tracked_calloc on the MicroPython GC heap and counts against it.
// Two board choices on top, both in mbedtls_port.c:
// - record buffers of MOTESEAL_TLS_RECORD bytes each way (the common
//   config has 16 KiB in, 4 KiB out), with the max_fragment_length
//   extension asked of the server so that it never sends a longer record
//   (OpenSSL, and so Mosquitto, honours it);
// - the clock: the board's RTC stand-in (mbedtls_port.c), for the
//   certificate dates.
//
// Copyright (c) 2026 the moteseal authors. MIT licence.
#ifndef MOTESEAL_MBEDTLS_CONFIG_PORT_H
#define MOTESEAL_MBEDTLS_CONFIG_PORT_H

#include <time.h>
#include <stdint.h>

// The clock (mbedtls_port.c): seconds since 1970 from the RTC stand-in.
time_t motesealtls_rtc_time(time_t *timer);
#define MBEDTLS_PLATFORM_TIME_MACRO motesealtls_rtc_time
#define MBEDTLS_PLATFORM_MS_TIME_ALT
#define MBEDTLS_PLATFORM_GMTIME_R_ALT

#define MICROPY_MBEDTLS_CONFIG_BARE_METAL (1)
#include "extmod/mbedtls/mbedtls_config_common.h"

#ifndef MOTESEAL_TLS_RECORD
#define MOTESEAL_TLS_RECORD (2048)
#endif
// 0: MicroPython's own buffers, no max_fragment_length (the lane's
// control: what a board gets without this choice).
#if MOTESEAL_TLS_RECORD
#undef MBEDTLS_SSL_MAX_CONTENT_LEN
#undef MBEDTLS_SSL_IN_CONTENT_LEN
#undef MBEDTLS_SSL_OUT_CONTENT_LEN
#define MBEDTLS_SSL_IN_CONTENT_LEN (MOTESEAL_TLS_RECORD)
#define MBEDTLS_SSL_OUT_CONTENT_LEN (MOTESEAL_TLS_RECORD)
#define MBEDTLS_SSL_MAX_FRAGMENT_LENGTH
#endif

#endif
