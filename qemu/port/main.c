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
// What the host loads at MSFS_BASE is one of two formats:
//
// - "MSF1" (qemu_board.pack_files): the magic, then records of
//   u32 name_len, u32 data_len, name bytes, data bytes, zero padding to 4,
//   ended by a record whose name_len is 0. All little-endian. Names are paths
//   relative to the import root, e.g. "micropython_port/x25519.py". A .mpy
//   from it is read into RAM (as from a board's filesystem).
// - a ROMFS image (magic D2 CD 31; `moteseal flash build --romfs`, the
//   format `mpremote romfs deploy` writes to rp2/stm32 flash): records of
//   uint kind, uint len, payload (uints are 7 bits a byte, most significant
//   first, high bit = more), directories (kind 4: name, then records) and
//   files (kind 5: name, then a verbatim data record, kind 2). A .mpy from
//   it is read with MP_READER_IS_ROM: its bytecode, qstrs and constant
//   strings stay in place in the mapped memory, the same py/ code path a
//   ROMFS mount takes on a board; native code is still copied to the heap.
//
// Invariant: every walk stays inside [MSFS_BASE, MSFS_END) and inside its
// enclosing record; a malformed image finds nothing (ENOENT), never reads
// past it.

#define MSFS_BASE ((const uint8_t *)0x21000000)
#define MSFS_END (MSFS_BASE + 0x00C00000)  // the RAM file system (ramfs.c) follows

static uint32_t rd32(const uint8_t *p) {
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24);
}

typedef struct {
    const char *path;
    size_t len;
    const uint8_t *data;
    size_t data_len;
    bool rom;
} msfs_query_t;

static int msf1_find(msfs_query_t *q) {
    const uint8_t *p = MSFS_BASE + 4;
    while (p + 8 <= MSFS_END) {
        uint32_t nlen = rd32(p), dlen = rd32(p + 4);
        if (nlen == 0 || nlen > (size_t)(MSFS_END - p - 8) || dlen > (size_t)(MSFS_END - p - 8 - nlen)) {
            break;
        }
        const char *name = (const char *)(p + 8);
        if (nlen == q->len && memcmp(name, q->path, nlen) == 0) {
            q->data = p + 8 + nlen;
            q->data_len = dlen;
            return MP_IMPORT_STAT_FILE;
        }
        if (nlen > q->len && memcmp(name, q->path, q->len) == 0 && name[q->len] == '/') {
            return MP_IMPORT_STAT_DIR;
        }
        p += (8 + nlen + dlen + 3) & ~3u;
    }
    return 0;
}

// One ROMFS uint at *p (below end); false if it runs past end or overflows.
static bool romfs_uint(const uint8_t **p, const uint8_t *end, size_t *out) {
    size_t v = 0;
    for (int i = 0; i < 5; ++i) {
        if (*p >= end) {
            return false;
        }
        uint8_t b = *(*p)++;
        v = (v << 7) | (b & 0x7f);
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false;
}

// One record at *p: its kind and payload [*pay, *pay + *plen); *p moves past it.
static bool romfs_record(const uint8_t **p, const uint8_t *end, size_t *kind,
    const uint8_t **pay, size_t *plen) {
    if (!romfs_uint(p, end, kind) || !romfs_uint(p, end, plen) || *plen > (size_t)(end - *p)) {
        return false;
    }
    *pay = *p;
    *p += *plen;
    return true;
}

#define ROMFS_DATA_VERBATIM (2)
#define ROMFS_DIRECTORY (4)
#define ROMFS_FILE (5)

static int romfs_find(msfs_query_t *q) {
    const uint8_t *p = MSFS_BASE + 3, *end;
    size_t len;
    if (!romfs_uint(&p, MSFS_END, &len) || len > (size_t)(MSFS_END - p)) {
        return 0;
    }
    end = p + len;
    const char *path = q->path, *path_end = q->path + q->len;
    while (p < end) {
        // The component of the path to find at this level.
        const char *slash = memchr(path, '/', path_end - path);
        size_t clen = (slash ? slash : path_end) - path;
        size_t kind, plen, nlen;
        const uint8_t *pay;
        if (!romfs_record(&p, end, &kind, &pay, &plen)) {
            return 0;
        }
        if (kind != ROMFS_DIRECTORY && kind != ROMFS_FILE) {
            continue;  // padding, unused
        }
        const uint8_t *pend = pay + plen;
        if (!romfs_uint(&pay, pend, &nlen) || nlen > (size_t)(pend - pay)
            || nlen != clen || memcmp(pay, path, clen) != 0) {
            continue;
        }
        pay += nlen;
        if (kind == ROMFS_DIRECTORY) {
            if (!slash) {
                return MP_IMPORT_STAT_DIR;
            }
            p = pay;  // descend: its records are the rest of its payload
            end = pend;
            path = slash + 1;
            continue;
        }
        if (slash) {
            return 0;  // a file named like a directory on the path
        }
        while (pay < pend) {
            const uint8_t *data;
            size_t dlen;
            if (!romfs_record(&pay, pend, &kind, &data, &dlen)) {
                return 0;
            }
            if (kind == ROMFS_DATA_VERBATIM) {
                q->data = data;
                q->data_len = dlen;
                q->rom = true;
                return MP_IMPORT_STAT_FILE;
            }
        }
        return 0;
    }
    return 0;
}

static int msfs_find(msfs_query_t *q) {
    if (memcmp(MSFS_BASE, "MSF1", 4) == 0) {
        return msf1_find(q);
    }
    if (MSFS_BASE[0] == 0xd2 && MSFS_BASE[1] == 0xcd && MSFS_BASE[2] == 0x31) {
        return romfs_find(q);
    }
    return 0;
}

mp_import_stat_t mp_import_stat(const char *path) {
    msfs_query_t q = {path, strlen(path), NULL, 0, false};
    int r = msfs_find(&q);
    return r ? (mp_import_stat_t)r : MP_IMPORT_STAT_NO_EXIST;
}

static void msfs_open(msfs_query_t *q, qstr filename) {
    q->path = qstr_str(filename);
    q->len = strlen(q->path);
    if (msfs_find(q) != MP_IMPORT_STAT_FILE) {
        mp_raise_OSError(MP_ENOENT);
    }
}

mp_lexer_t *mp_lexer_new_from_file(qstr filename) {
    msfs_query_t q = {NULL, 0, NULL, 0, false};
    msfs_open(&q, filename);
    return mp_lexer_new_from_str_len(filename, (const char *)q.data, q.data_len, 0);
}

// For .mpy files (MICROPY_PERSISTENT_CODE_LOAD): from an MSF1 table, read
// into RAM as from a board's filesystem; from a ROMFS image, in place.
void mp_reader_new_file(mp_reader_t *reader, qstr filename) {
    msfs_query_t q = {NULL, 0, NULL, 0, false};
    msfs_open(&q, filename);
    mp_reader_new_mem(reader, q.data, q.data_len, q.rom ? MP_READER_IS_ROM : 0);
}

// open() is the RAM file system's (ramfs.c), the board's flash emulated.
