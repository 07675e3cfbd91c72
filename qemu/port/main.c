// moteseal qemu port: boot, the REPL loop (friendly and raw, with raw-paste),
// and imports served from a read-only file table that the host loads into
// the board's PSRAM (qemu -device loader,...) before the CPU starts.
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include <string.h>

#include "py/builtin.h"
#include "py/compile.h"
#include "py/gc.h"
#include "py/lexer.h"
#include "py/reader.h"
#include "py/mperrno.h"
#include "py/runtime.h"
#include "py/stackctrl.h"
#include "shared/runtime/gchelper.h"
#include "shared/runtime/pyexec.h"

static uint32_t gc_heap[MICROPY_HEAP_SIZE / sizeof(uint32_t)];

__attribute__((noreturn)) void semihosting_exit(int status);

int main(void) {
    mp_cstack_init_with_sp_here(MICROPY_STACK_SIZE);
    gc_init(gc_heap, (char *)gc_heap + sizeof(gc_heap));
    for (;;) {
        mp_init();
        for (;;) {
            if (pyexec_mode_kind == PYEXEC_MODE_RAW_REPL) {
                if (pyexec_raw_repl() != 0) {
                    break;
                }
            } else {
                if (pyexec_friendly_repl() != 0) {
                    break;
                }
            }
        }
        mp_printf(&mp_plat_print, "MPY: soft reboot\n");
        gc_sweep_all();
        mp_deinit();
    }
}

void gc_collect(void) {
    gc_collect_start();
    gc_helper_collect_regs_and_stack();
    gc_collect_end();
}

void nlr_jump_fail(void *val) {
    (void)val;
    mp_printf(&mp_plat_print, "FATAL: uncaught NLR\n");
    semihosting_exit(1);
}

// ---- the file table -------------------------------------------------------
//
// At MSFS_BASE: the magic "MSF1", then records of
//   u32 name_len, u32 data_len, name bytes, data bytes, zero padding to 4,
// ended by a record whose name_len is 0. All little-endian. Names are paths
// relative to the import root, e.g. "micropython_port/x25519.py".

#define MSFS_BASE ((const uint8_t *)0x21000000)
#define MSFS_END (MSFS_BASE + 0x01000000)

static uint32_t rd32(const uint8_t *p) {
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Calls fn(name, name_len, data, data_len, arg) for each record until it
// returns non-zero, and returns that value (0 when none did).
typedef int (*msfs_fn)(const char *, size_t, const uint8_t *, size_t, void *);

static int msfs_walk(msfs_fn fn, void *arg) {
    const uint8_t *p = MSFS_BASE;
    if (memcmp(p, "MSF1", 4) != 0) {
        return 0;
    }
    p += 4;
    while (p + 8 <= MSFS_END) {
        uint32_t nlen = rd32(p), dlen = rd32(p + 4);
        if (nlen == 0 || p + 8 + nlen + dlen > MSFS_END) {
            break;
        }
        const char *name = (const char *)(p + 8);
        int r = fn(name, nlen, p + 8 + nlen, dlen, arg);
        if (r) {
            return r;
        }
        p += (8 + nlen + dlen + 3) & ~3u;
    }
    return 0;
}

typedef struct {
    const char *path;
    size_t len;
    const uint8_t *data;
    size_t data_len;
} msfs_query_t;

static int msfs_stat_fn(const char *name, size_t nlen, const uint8_t *data, size_t dlen, void *arg) {
    msfs_query_t *q = arg;
    if (nlen == q->len && memcmp(name, q->path, nlen) == 0) {
        q->data = data;
        q->data_len = dlen;
        return MP_IMPORT_STAT_FILE;
    }
    if (nlen > q->len && memcmp(name, q->path, q->len) == 0 && name[q->len] == '/') {
        return MP_IMPORT_STAT_DIR;
    }
    return 0;
}

mp_import_stat_t mp_import_stat(const char *path) {
    msfs_query_t q = {path, strlen(path), NULL, 0};
    int r = msfs_walk(msfs_stat_fn, &q);
    return r ? (mp_import_stat_t)r : MP_IMPORT_STAT_NO_EXIST;
}

mp_lexer_t *mp_lexer_new_from_file(qstr filename) {
    const char *path = qstr_str(filename);
    msfs_query_t q = {path, strlen(path), NULL, 0};
    if (msfs_walk(msfs_stat_fn, &q) != MP_IMPORT_STAT_FILE) {
        mp_raise_OSError(MP_ENOENT);
    }
    return mp_lexer_new_from_str_len(filename, (const char *)q.data, q.data_len, 0);
}

// For .mpy files (MICROPY_PERSISTENT_CODE_LOAD): read them in place from the
// table, as a flash build's modules are read from a board's filesystem.
void mp_reader_new_file(mp_reader_t *reader, qstr filename) {
    const char *path = qstr_str(filename);
    msfs_query_t q = {path, strlen(path), NULL, 0};
    if (msfs_walk(msfs_stat_fn, &q) != MP_IMPORT_STAT_FILE) {
        mp_raise_OSError(MP_ENOENT);
    }
    mp_reader_new_mem(reader, q.data, q.data_len, 0);
}

mp_obj_t mp_builtin_open(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    mp_raise_OSError(MP_ENOENT);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mp_builtin_open_obj, 1, mp_builtin_open);
