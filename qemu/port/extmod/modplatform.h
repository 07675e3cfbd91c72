// Stand-in for MicroPython's extmod/modplatform.h, which py/modsys.c and
// shared/runtime/pyexec.c include but the PyPI sdist of the core does not
// carry. Nothing they use from it is needed by this port (the banner and
// sys.platform come from mpconfigport.h).
//
// Copyright (c) 2025 the moteseal authors. MIT licence.
