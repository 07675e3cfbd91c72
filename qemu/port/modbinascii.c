// moteseal qemu port: `binascii.hexlify` / `unhexlify` (the core's
// extmod/modbinascii.c is not in the PyPI sdist); moteseal/conformance/runner.py
// imports them.
//
// Copyright (c) 2025 the moteseal authors. MIT licence.

#include "py/runtime.h"

static mp_obj_t binascii_hexlify(mp_obj_t data) {
    mp_buffer_info_t buf;
    mp_get_buffer_raise(data, &buf, MP_BUFFER_READ);
    vstr_t vstr;
    vstr_init_len(&vstr, buf.len * 2);
    const uint8_t *in = buf.buf;
    for (size_t i = 0; i < buf.len; i++) {
        vstr.buf[2 * i] = "0123456789abcdef"[in[i] >> 4];
        vstr.buf[2 * i + 1] = "0123456789abcdef"[in[i] & 15];
    }
    return mp_obj_new_bytes_from_vstr(&vstr);
}
static MP_DEFINE_CONST_FUN_OBJ_1(binascii_hexlify_obj, binascii_hexlify);

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

static mp_obj_t binascii_unhexlify(mp_obj_t data) {
    mp_buffer_info_t buf;
    mp_get_buffer_raise(data, &buf, MP_BUFFER_READ);
    if (buf.len & 1) {
        mp_raise_ValueError(MP_ERROR_TEXT("odd-length string"));
    }
    vstr_t vstr;
    vstr_init_len(&vstr, buf.len / 2);
    const uint8_t *in = buf.buf;
    for (size_t i = 0; i < buf.len / 2; i++) {
        int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("non-hex digit"));
        }
        vstr.buf[i] = (hi << 4) | lo;
    }
    return mp_obj_new_bytes_from_vstr(&vstr);
}
static MP_DEFINE_CONST_FUN_OBJ_1(binascii_unhexlify_obj, binascii_unhexlify);

static const mp_rom_map_elem_t binascii_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_binascii) },
    { MP_ROM_QSTR(MP_QSTR_hexlify), MP_ROM_PTR(&binascii_hexlify_obj) },
    { MP_ROM_QSTR(MP_QSTR_unhexlify), MP_ROM_PTR(&binascii_unhexlify_obj) },
};
static MP_DEFINE_CONST_DICT(binascii_module_globals, binascii_module_globals_table);

const mp_obj_module_t mp_module_binascii = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&binascii_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_binascii, mp_module_binascii);
