// moteseal qemu port: a minimal `os` (urandom, sep, and the RAM file
// system's stat/remove/rename/listdir); the core's
// extmod/modos.c is not in the PyPI sdist.
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include "py/mphal.h"
#include "py/runtime.h"

static mp_obj_t os_urandom(mp_obj_t num) {
    mp_int_t n = mp_obj_get_int(num);
    if (n < 0) {
        mp_raise_ValueError(NULL);
    }
    vstr_t vstr;
    vstr_init_len(&vstr, n);
    mp_hal_get_random(n, (uint8_t *)vstr.buf);
    return mp_obj_new_bytes_from_vstr(&vstr);
}
static MP_DEFINE_CONST_FUN_OBJ_1(os_urandom_obj, os_urandom);

// The board's flash file system, emulated in RAM (ramfs.c).
MP_DECLARE_CONST_FUN_OBJ_1(ramfs_stat_obj);
MP_DECLARE_CONST_FUN_OBJ_1(ramfs_remove_obj);
MP_DECLARE_CONST_FUN_OBJ_2(ramfs_rename_obj);
MP_DECLARE_CONST_FUN_OBJ_VAR_BETWEEN(ramfs_listdir_obj);

static const mp_rom_map_elem_t os_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_os) },
    { MP_ROM_QSTR(MP_QSTR_urandom), MP_ROM_PTR(&os_urandom_obj) },
    { MP_ROM_QSTR(MP_QSTR_sep), MP_ROM_QSTR(MP_QSTR__slash_) },
    { MP_ROM_QSTR(MP_QSTR_stat), MP_ROM_PTR(&ramfs_stat_obj) },
    { MP_ROM_QSTR(MP_QSTR_remove), MP_ROM_PTR(&ramfs_remove_obj) },
    { MP_ROM_QSTR(MP_QSTR_rename), MP_ROM_PTR(&ramfs_rename_obj) },
    { MP_ROM_QSTR(MP_QSTR_listdir), MP_ROM_PTR(&ramfs_listdir_obj) },
};
static MP_DEFINE_CONST_DICT(os_module_globals, os_module_globals_table);

const mp_obj_module_t mp_module_os = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&os_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_os, mp_module_os);
