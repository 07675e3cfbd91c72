/* One TLS 1.2 client handshake with mbedtls, every allocation counted as it
 * would cost on MicroPython's GC heap (see bench/tls_heap.py).
 * Usage: client PORT CA.der; prints one "key=value ..." line. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include "mbedtls/ssl.h"
#include "mbedtls/platform.h"
#include "mbedtls/entropy.h"
#include "mbedtls/ctr_drbg.h"
#include "mbedtls/x509_crt.h"

static long cur, peak, largest, nalloc;

/* m_tracked_calloc: an 8-byte list node (two pointers on a 32-bit board)
 * before the data, rounded up to 16-byte GC blocks. */
static long cost(size_t n) { return (long)((n + 8 + 15) / 16 * 16); }

static void *counting_calloc(size_t nmemb, size_t size) {
    size_t n = nmemb * size;
    long c = cost(n);
    long *p = calloc(1, n + 16);  /* 16-byte header keeps the data aligned */
    if (!p) return NULL;
    p[0] = c;
    cur += c;
    nalloc++;
    if (cur > peak) peak = cur;
    if (c > largest) largest = c;
    return p + 2;
}

static void counting_free(void *q) {
    if (!q) return;
    long *p = (long *)q - 2;
    cur -= p[0];
    free(p);
}

static int bio_send(void *ctx, const unsigned char *b, size_t n) { return (int)send(*(int *)ctx, b, n, 0); }
static int bio_recv(void *ctx, unsigned char *b, size_t n) { return (int)recv(*(int *)ctx, b, n, 0); }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s PORT CA.der\n", argv[0]); return 2; }
    mbedtls_platform_set_calloc_free(counting_calloc, counting_free);
    mbedtls_entropy_context ent;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_x509_crt ca;
    /* modtls_mbedtls keeps these in GC objects: count them as allocations too */
    long structs = cost(sizeof ent) + cost(sizeof drbg) + cost(sizeof conf) + cost(sizeof ssl) + cost(sizeof ca);
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_ssl_config_init(&conf);
    mbedtls_ssl_init(&ssl);
    mbedtls_x509_crt_init(&ca);

    int r = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, (const unsigned char *)"tls_heap", 8);
    if (!r) r = mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                            MBEDTLS_SSL_PRESET_DEFAULT);
    if (r) { fprintf(stderr, "init -0x%x\n", -r); return 1; }
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);

    unsigned char der[4096];
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 1; }
    size_t len = fread(der, 1, sizeof der, f);
    fclose(f);
    if ((r = mbedtls_x509_crt_parse_der(&ca, der, len))) { fprintf(stderr, "CA -0x%x\n", -r); return 1; }
    mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
#if TLS_HEAP_MAXFRAG
    mbedtls_ssl_conf_max_frag_len(&conf, MBEDTLS_SSL_MAX_FRAG_LEN_2048);
#endif
    if ((r = mbedtls_ssl_setup(&ssl, &conf)) || (r = mbedtls_ssl_set_hostname(&ssl, "localhost"))) {
        fprintf(stderr, "setup -0x%x\n", -r);
        return 1;
    }
    long after_setup = cur;

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    mbedtls_ssl_set_bio(&ssl, &fd, bio_send, bio_recv, NULL);
    while ((r = mbedtls_ssl_handshake(&ssl))) {
        if (r != MBEDTLS_ERR_SSL_WANT_READ && r != MBEDTLS_ERR_SSL_WANT_WRITE) {
            fprintf(stderr, "handshake -0x%x\n", -r);
            return 1;
        }
    }
    printf("version=%s suite=%s peak=%ld setup=%ld after=%ld largest=%ld allocs=%ld structs=%ld\n",
           mbedtls_ssl_get_version(&ssl), mbedtls_ssl_get_ciphersuite(&ssl), peak, after_setup, cur,
           largest, nalloc, structs);
    mbedtls_ssl_close_notify(&ssl);
    close(fd);
    mbedtls_ssl_free(&ssl);
    mbedtls_ssl_config_free(&conf);
    mbedtls_x509_crt_free(&ca);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&ent);
    return 0;
}
