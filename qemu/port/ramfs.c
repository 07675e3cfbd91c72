// moteseal qemu port: the board's flash file system, emulated in RAM.
//
// A board keeps the device's files (the message-1 counter, a transfer's
// .part/.xfer/.xstate, installed files) in flash; the qemu lane has no
// flash driver and the PyPI sdist has no extmod/ VFS. This is a small file
// system over a fixed region of the MPS2 PSRAM, outside the GC heap, so a
// file costs the heap nothing (as on a board) and a soft reset (Ctrl-D)
// keeps the files (as a reboot keeps flash). Only a new qemu starts empty.
//
// Layout at RAMFS_BASE: a header (magic, entry table of RAMFS_FILES
// entries), then one fixed slot of RAMFS_SLOT bytes per entry. Limits:
// RAMFS_FILES files, a name of at most RAMFS_NAME-1 bytes (a flat name;
// "a/b" is a file whose name has a slash, and os.listdir/os.stat treat the
// part before the slash as a directory), a file of at most RAMFS_SLOT bytes
// (ENOSPC beyond), no os.mkdir, no timestamps.
//
// Invariants:
// - an entry is in use iff used == 1; its data is slot[index][0, size).
// - every write stays inside the file's slot (ENOSPC otherwise, nothing
//   written); data is written through, so what a write returned is in the
//   region at once (flush does nothing).
// - os.rename renames the source's entry and frees the destination's in
//   one step (no interpreter code runs between), so a reset sees the old
//   or the new name, never neither.
// - an open file names its entry by index and generation: once the entry
//   is removed or replaced (its generation changes), the file raises
//   EBADF, never reaches another file's data.
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include <string.h>

#include "py/runtime.h"
#include "py/stream.h"
#include "py/mperrno.h"
#include "py/objstr.h"

#define RAMFS_BASE (0x21C00000u)
#define RAMFS_FILES (15)
#define RAMFS_NAME (56)
#define RAMFS_SLOT (256u * 1024u)
#define RAMFS_DATA (RAMFS_BASE + 0x1000u)
#define RAMFS_MAGIC (0x3146524du)  // "MRF1"

typedef struct {
    char name[RAMFS_NAME];
    uint32_t used;
    uint32_t size;
} ramfs_entry_t;

typedef struct {
    uint32_t magic;
    uint32_t gen;  // the next generation handed out
    uint32_t egen[RAMFS_FILES];
    ramfs_entry_t e[RAMFS_FILES];
} ramfs_t;

#define FS ((ramfs_t *)RAMFS_BASE)

// The table fits before the slots, and the slots end inside the 16 MiB PSRAM.
_Static_assert(sizeof(ramfs_t) <= RAMFS_DATA - RAMFS_BASE, "ramfs table too large");
_Static_assert(RAMFS_DATA + RAMFS_FILES * RAMFS_SLOT <= 0x22000000u, "ramfs past the PSRAM");

static uint8_t *slot(int i) {
    return (uint8_t *)(RAMFS_DATA + (uint32_t)i * RAMFS_SLOT);
}

// Formats the region the first time (a fresh qemu: PSRAM is zero).
static ramfs_t *fs(void) {
    if (FS->magic != RAMFS_MAGIC) {
        memset(FS, 0, sizeof(ramfs_t));
        FS->magic = RAMFS_MAGIC;
        FS->gen = 1;
    }
    return FS;
}

// A path as the fs names it: leading "/" and "./" dropped. Raises EINVAL
// (too long) or ENOENT (a NUL in it) for a name that cannot be stored.
static const char *norm(mp_obj_t path, size_t *len) {
    const char *p = mp_obj_str_get_data(path, len);
    for (;;) {
        if (*len >= 1 && p[0] == '/') {
            ++p;
            --*len;
        } else if (*len >= 2 && p[0] == '.' && p[1] == '/') {
            p += 2;
            *len -= 2;
        } else {
            break;
        }
    }
    if (*len >= RAMFS_NAME) {
        mp_raise_OSError(MP_EINVAL);  // no MP_ENAMETOOLONG in py/mperrno.h
    }
    if (memchr(p, 0, *len)) {
        mp_raise_OSError(MP_ENOENT);
    }
    return p;
}

static int find(const char *p, size_t len) {
    ramfs_t *f = fs();
    for (int i = 0; i < RAMFS_FILES; ++i) {
        if (f->e[i].used == 1 && strlen(f->e[i].name) == len && memcmp(f->e[i].name, p, len) == 0) {
            return i;
        }
    }
    return -1;
}

static bool is_dir(const char *p, size_t len) {
    if (len == 0 || (len == 1 && p[0] == '.')) {
        return true;
    }
    ramfs_t *f = fs();
    for (int i = 0; i < RAMFS_FILES; ++i) {
        if (f->e[i].used == 1 && strlen(f->e[i].name) > len
            && memcmp(f->e[i].name, p, len) == 0 && f->e[i].name[len] == '/') {
            return true;
        }
    }
    return false;
}

static int create(const char *p, size_t len) {
    ramfs_t *f = fs();
    for (int i = 0; i < RAMFS_FILES; ++i) {
        if (f->e[i].used != 1) {
            memcpy(f->e[i].name, p, len);
            f->e[i].name[len] = 0;
            f->e[i].size = 0;
            f->egen[i] = f->gen++;
            f->e[i].used = 1;
            return i;
        }
    }
    mp_raise_OSError(MP_ENOSPC);
}

// ---- the file object ------------------------------------------------------

typedef struct {
    mp_obj_base_t base;
    int16_t idx;  // -1: closed
    uint8_t rd, wr, app;
    uint32_t gen;
    uint32_t pos;
} ramfs_file_t;

static ramfs_entry_t *entry(ramfs_file_t *self, int *errcode) {
    if (self->idx < 0 || fs()->egen[self->idx] != self->gen || fs()->e[self->idx].used != 1) {
        *errcode = MP_EBADF;
        return NULL;
    }
    return &fs()->e[self->idx];
}

static mp_uint_t file_read(mp_obj_t o, void *buf, mp_uint_t size, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(o);
    ramfs_entry_t *e = entry(self, errcode);
    if (e == NULL || !self->rd) {
        *errcode = MP_EBADF;
        return MP_STREAM_ERROR;
    }
    mp_uint_t n = self->pos >= e->size ? 0 : e->size - self->pos;
    if (n > size) {
        n = size;
    }
    memcpy(buf, slot(self->idx) + self->pos, n);
    self->pos += n;
    return n;
}

static mp_uint_t file_write(mp_obj_t o, const void *buf, mp_uint_t size, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(o);
    ramfs_entry_t *e = entry(self, errcode);
    if (e == NULL || !self->wr) {
        *errcode = MP_EBADF;
        return MP_STREAM_ERROR;
    }
    if (self->app) {
        self->pos = e->size;
    }
    if (self->pos > RAMFS_SLOT || size > RAMFS_SLOT - self->pos) {
        *errcode = MP_ENOSPC;
        return MP_STREAM_ERROR;
    }
    if (self->pos > e->size) {  // a seek past the end: the gap reads as zeros
        memset(slot(self->idx) + e->size, 0, self->pos - e->size);
    }
    memcpy(slot(self->idx) + self->pos, buf, size);
    self->pos += size;
    if (self->pos > e->size) {
        e->size = self->pos;
    }
    return size;
}

static mp_uint_t file_ioctl(mp_obj_t o, mp_uint_t request, uintptr_t arg, int *errcode) {
    ramfs_file_t *self = MP_OBJ_TO_PTR(o);
    if (request == MP_STREAM_CLOSE) {
        self->idx = -1;
        return 0;
    }
    ramfs_entry_t *e = entry(self, errcode);
    if (e == NULL) {
        return MP_STREAM_ERROR;
    }
    if (request == MP_STREAM_FLUSH) {
        return 0;  // written through
    }
    if (request == MP_STREAM_SEEK) {
        struct mp_stream_seek_t *s = (struct mp_stream_seek_t *)arg;
        mp_off_t base = s->whence == MP_SEEK_SET ? 0 : s->whence == MP_SEEK_CUR ? (mp_off_t)self->pos : (mp_off_t)e->size;
        mp_off_t to = base + s->offset;
        if (to < 0) {
            *errcode = MP_EINVAL;
            return MP_STREAM_ERROR;
        }
        self->pos = to;
        s->offset = to;
        return 0;
    }
    *errcode = MP_EINVAL;
    return MP_STREAM_ERROR;
}

static void file_print(const mp_print_t *print, mp_obj_t o, mp_print_kind_t kind) {
    mp_printf(print, "<ramfs file %d>", ((ramfs_file_t *)MP_OBJ_TO_PTR(o))->idx);
}

static const mp_rom_map_elem_t file_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&mp_stream_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_readinto), MP_ROM_PTR(&mp_stream_readinto_obj) },
    { MP_ROM_QSTR(MP_QSTR_readline), MP_ROM_PTR(&mp_stream_unbuffered_readline_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&mp_stream_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_seek), MP_ROM_PTR(&mp_stream_seek_obj) },
    { MP_ROM_QSTR(MP_QSTR_tell), MP_ROM_PTR(&mp_stream_tell_obj) },
    { MP_ROM_QSTR(MP_QSTR_flush), MP_ROM_PTR(&mp_stream_flush_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&mp_stream_close_obj) },
    { MP_ROM_QSTR(MP_QSTR___enter__), MP_ROM_PTR(&mp_identity_obj) },
    { MP_ROM_QSTR(MP_QSTR___exit__), MP_ROM_PTR(&mp_stream___exit___obj) },
};
static MP_DEFINE_CONST_DICT(file_locals, file_locals_table);

static const mp_stream_p_t file_bin_p = {
    .read = file_read, .write = file_write, .ioctl = file_ioctl, .is_text = false,
};
static const mp_stream_p_t file_text_p = {
    .read = file_read, .write = file_write, .ioctl = file_ioctl, .is_text = true,
};

static MP_DEFINE_CONST_OBJ_TYPE(ramfs_bin_type, MP_QSTR_FileIO, MP_TYPE_FLAG_ITER_IS_STREAM,
    print, file_print, protocol, &file_bin_p, locals_dict, &file_locals);
static MP_DEFINE_CONST_OBJ_TYPE(ramfs_text_type, MP_QSTR_TextIOWrapper, MP_TYPE_FLAG_ITER_IS_STREAM,
    print, file_print, protocol, &file_text_p, locals_dict, &file_locals);

// open(path, mode="r"): r, w, a, x with b/t and +, as CPython.
mp_obj_t mp_builtin_open(size_t n_args, const mp_obj_t *args, mp_map_t *kwargs) {
    (void)kwargs;
    const char *mode = n_args > 1 ? mp_obj_str_get_str(args[1]) : "r";
    bool rd = false, wr = false, app = false, trunc = false, make = false, excl = false, text = true;
    for (const char *m = mode; *m; ++m) {
        switch (*m) {
            case 'r': rd = true; break;
            case 'w': wr = trunc = make = true; break;
            case 'a': wr = app = make = true; break;
            case 'x': wr = make = excl = true; break;
            case '+': rd = wr = true; break;
            case 'b': text = false; break;
            case 't': text = true; break;
            default: mp_raise_ValueError(MP_ERROR_TEXT("invalid mode"));
        }
    }
    size_t len;
    const char *p = norm(args[0], &len);
    int i = find(p, len);
    if (i >= 0 && excl) {
        mp_raise_OSError(MP_EEXIST);
    }
    if (i < 0) {
        if (!make || len == 0 || is_dir(p, len)) {
            mp_raise_OSError(len == 0 || is_dir(p, len) ? MP_EISDIR : MP_ENOENT);
        }
        i = create(p, len);
    } else if (trunc) {
        fs()->e[i].size = 0;
    }
    ramfs_file_t *o = mp_obj_malloc(ramfs_file_t, text ? &ramfs_text_type : &ramfs_bin_type);
    o->idx = i;
    o->gen = fs()->egen[i];
    o->rd = rd;
    o->wr = wr;
    o->app = app;
    o->pos = 0;
    return MP_OBJ_FROM_PTR(o);
}
MP_DEFINE_CONST_FUN_OBJ_KW(mp_builtin_open_obj, 1, mp_builtin_open);

// ---- os functions (modos.c puts them in the module) -------------------------

static mp_obj_t ramfs_stat(mp_obj_t path) {
    size_t len;
    const char *p = norm(path, &len);
    int i = find(p, len);
    mp_int_t mode, size = 0;
    if (i >= 0) {
        mode = 0x8000;  // S_IFREG
        size = fs()->e[i].size;
    } else if (is_dir(p, len)) {
        mode = 0x4000;  // S_IFDIR
    } else {
        mp_raise_OSError(MP_ENOENT);
    }
    mp_obj_t t[10];
    for (int k = 0; k < 10; ++k) {
        t[k] = MP_OBJ_NEW_SMALL_INT(0);
    }
    t[0] = MP_OBJ_NEW_SMALL_INT(mode);
    t[6] = mp_obj_new_int(size);
    return mp_obj_new_tuple(10, t);
}
MP_DEFINE_CONST_FUN_OBJ_1(ramfs_stat_obj, ramfs_stat);

static mp_obj_t ramfs_remove(mp_obj_t path) {
    size_t len;
    const char *p = norm(path, &len);
    int i = find(p, len);
    if (i < 0) {
        mp_raise_OSError(is_dir(p, len) ? MP_EISDIR : MP_ENOENT);
    }
    fs()->e[i].used = 0;
    return mp_const_none;
}
MP_DEFINE_CONST_FUN_OBJ_1(ramfs_remove_obj, ramfs_remove);

static mp_obj_t ramfs_rename(mp_obj_t from, mp_obj_t to) {
    size_t flen, tlen;
    const char *fp = norm(from, &flen);
    const char *tp = norm(to, &tlen);
    int i = find(fp, flen);
    if (i < 0) {
        mp_raise_OSError(MP_ENOENT);
    }
    if (tlen == 0 || is_dir(tp, tlen)) {
        mp_raise_OSError(MP_EISDIR);
    }
    int j = find(tp, tlen);
    if (j == i) {
        return mp_const_none;
    }
    ramfs_t *f = fs();
    // One step (Invariants): the destination's entry freed, the source renamed.
    if (j >= 0) {
        f->e[j].used = 0;
    }
    memcpy(f->e[i].name, tp, tlen);
    f->e[i].name[tlen] = 0;
    return mp_const_none;
}
MP_DEFINE_CONST_FUN_OBJ_2(ramfs_rename_obj, ramfs_rename);

// os.listdir(path=""): the names directly under path.
static mp_obj_t ramfs_listdir(size_t n_args, const mp_obj_t *args) {
    size_t len = 0;
    const char *p = n_args ? norm(args[0], &len) : "";
    if (len == 1 && p[0] == '.') {
        len = 0;
    }
    if (!is_dir(p, len)) {
        mp_raise_OSError(find(p, len) >= 0 ? MP_ENOTDIR : MP_ENOENT);
    }
    mp_obj_t out = mp_obj_new_list(0, NULL);
    ramfs_t *f = fs();
    for (int i = 0; i < RAMFS_FILES; ++i) {
        const char *n = f->e[i].name;
        if (f->e[i].used != 1 || (len && (strlen(n) <= len || memcmp(n, p, len) != 0 || n[len] != '/'))) {
            continue;
        }
        const char *rest = len ? n + len + 1 : n;
        const char *slash = strchr(rest, '/');
        size_t rlen = slash ? (size_t)(slash - rest) : strlen(rest);
        mp_obj_t name = mp_obj_new_str(rest, rlen);
        // A directory is listed once, however many files are under it.
        size_t n_items;
        mp_obj_t *items;
        mp_obj_list_get(out, &n_items, &items);
        bool seen = false;
        for (size_t k = 0; slash && k < n_items; ++k) {
            seen = seen || mp_obj_equal(items[k], name);
        }
        if (!seen) {
            mp_obj_list_append(out, name);
        }
    }
    return out;
}
MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(ramfs_listdir_obj, 0, 1, ramfs_listdir);
