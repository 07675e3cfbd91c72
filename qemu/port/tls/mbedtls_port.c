// The board's side of mbedtls in the qemu lane's TLS firmware (`make TLS=1`):
// entropy, the clock, and the max_fragment_length request.
//
// Copyright (c) 2026 the moteseal authors. MIT licence.

#include <string.h>

#include "py/mphal.h"
#include "shared/timeutils/timeutils.h"
#include "mbedtls/platform_time.h"
#include "mbedtls/platform_util.h"
#include "mbedtls/ssl.h"

// Entropy: the port's os.urandom source (mphalport.c), NOT a secure one:
// the board has no TRNG and this is xorshift32 seeded from the cycle
// counter, so the lane's TLS keys and nonces are predictable. It proves
// the code path and its heap, never secrecy; a real board gives mbedtls its
// TRNG here (rp2: the ROSC, stm32: the RNG peripheral).
int mbedtls_hardware_poll(void *data, unsigned char *output, size_t len, size_t *olen) {
    (void)data;
    mp_hal_get_random(len, output);
    *olen = len;
    return 0;
}

// The clock. A bare-metal board keeps wall time in its RTC, which reads a
// fixed past date until set (ntptime or machine.RTC; rp2 starts at
// 2021-01-01, an stm32 RTC without backup at 2000-01-01), and the ports
// give mbedtls that RTC (stm32: stm32_rtctime_seconds, rp2: the AON timer).
// The board has no RTC that qemu models, so its stand-in is a word in the
// PSRAM that qemu_board.Board writes before the CPU starts (the host's
// time, as if set by ntptime; 0 leaves it unset), plus the seconds since
// boot. Unset, it reads 2000-01-01, a never-set RTC's date, and every
// certificate is "not yet valid" (docs/micropython.md).
#define RTC_WORD (*(volatile uint32_t *)0x21FFFFF8u)
#define SECONDS_1970_TO_2000 (946684800u)

static time_t rtc_seconds(void) {
    uint32_t set = RTC_WORD;
    return (time_t)(set ? set : SECONDS_1970_TO_2000) + mp_hal_ticks_ms() / 1000;
}

time_t motesealtls_rtc_time(time_t *timer) {
    time_t t = rtc_seconds();
    if (timer) {
        *timer = t;
    }
    return t;
}

mbedtls_ms_time_t mbedtls_ms_time(void) {
    return (mbedtls_ms_time_t)rtc_seconds() * 1000;
}

struct tm *mbedtls_platform_gmtime_r(const mbedtls_time_t *tt, struct tm *tm_buf) {
    timeutils_struct_time_t t;
    timeutils_seconds_since_1970_to_struct_time((timeutils_timestamp_t)*tt, &t);
    memset(tm_buf, 0, sizeof(*tm_buf));
    tm_buf->tm_sec = t.tm_sec;
    tm_buf->tm_min = t.tm_min;
    tm_buf->tm_hour = t.tm_hour;
    tm_buf->tm_mday = t.tm_mday;
    tm_buf->tm_mon = t.tm_mon - 1;
    tm_buf->tm_year = t.tm_year - 1900;
    tm_buf->tm_wday = t.tm_wday;
    tm_buf->tm_yday = t.tm_yday;
    return tm_buf;
}

// max_fragment_length: the tls module (extmod/modtls_mbedtls.c) has no
// setting for it, so the firmware asks for it on every connection, the
// way MicroPython wraps mbedtls_ecdsa_write_signature (-Wl,--wrap): the
// client's record buffers hold MOTESEAL_TLS_RECORD bytes, and a server
// that honours the extension (RFC 6066) sends no longer record. A server
// that ignores it and sends a longer one fails the handshake
// (tls_failed), never silently.
#if MOTESEAL_TLS_RECORD
#if MOTESEAL_TLS_RECORD == 512
#define MFL_CODE MBEDTLS_SSL_MAX_FRAG_LEN_512
#elif MOTESEAL_TLS_RECORD == 1024
#define MFL_CODE MBEDTLS_SSL_MAX_FRAG_LEN_1024
#elif MOTESEAL_TLS_RECORD == 2048
#define MFL_CODE MBEDTLS_SSL_MAX_FRAG_LEN_2048
#elif MOTESEAL_TLS_RECORD == 4096
#define MFL_CODE MBEDTLS_SSL_MAX_FRAG_LEN_4096
#else
#error "MOTESEAL_TLS_RECORD must be 512, 1024, 2048 or 4096 (a max_fragment_length)"
#endif

int __real_mbedtls_ssl_setup(mbedtls_ssl_context *ssl, const mbedtls_ssl_config *conf);

int __wrap_mbedtls_ssl_setup(mbedtls_ssl_context *ssl, const mbedtls_ssl_config *conf) {
    // conf is the SSLContext's own, which modtls_mbedtls.c created mutable.
    mbedtls_ssl_conf_max_frag_len((mbedtls_ssl_config *)conf, MFL_CODE);
    return __real_mbedtls_ssl_setup(ssl, conf);
}
#endif
