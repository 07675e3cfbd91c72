/* mbedtls configuration for bench/tls_heap.py: MicroPython's own
 * (extmod/mbedtls/mbedtls_config_common.h, extracted from the MicroPython
 * source at run time), as the unix port uses it, with the allocator made
 * replaceable so client.c can count every allocation.
 * -DTLS_HEAP_MAXFRAG=1: 2 KiB in/out record buffers and max_fragment_length. */
#define MICROPY_MBEDTLS_CONFIG_BARE_METAL 0
#include "mbedtls_config_common.h"
#define MBEDTLS_PLATFORM_MEMORY

#if TLS_HEAP_MAXFRAG
#undef MBEDTLS_SSL_IN_CONTENT_LEN
#undef MBEDTLS_SSL_OUT_CONTENT_LEN
#define MBEDTLS_SSL_IN_CONTENT_LEN 2048
#define MBEDTLS_SSL_OUT_CONTENT_LEN 2048
#define MBEDTLS_SSL_MAX_FRAGMENT_LENGTH
#endif
