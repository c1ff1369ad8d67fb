/*
 * ffi_check_redirect.h - route a C file's allocations through ffi-check.
 *
 * Opt-in: include it in C code you build together with ffi-check, after the
 * system headers (it includes <stdlib.h> and <string.h> itself, so that their
 * declarations are seen before the names are redefined):
 *
 *     #include <stdio.h>
 *     #include "ffi_check_redirect.h"
 *
 * From then on in that file malloc, calloc, realloc, strdup and free are
 * ffi_check_malloc and friends: every block is tracked as C memory with the
 * file and line that allocated it (leak reports name them), every free goes
 * through the checks (double free, free of Rust memory, of an interior
 * pointer), and mode 2 scans the blocks for pointers C keeps.
 *
 * The memory is still libc malloc memory, so blocks may cross between
 * redirected and plain code; a plain free() of a tracked block just leaves
 * a stale record behind (reported as a leak).  Define
 * FFI_CHECK_NO_REDIRECT to turn the redirection off without editing the
 * file.
 */
#ifndef FFI_CHECK_REDIRECT_H
#define FFI_CHECK_REDIRECT_H

#include <stdlib.h>
#include <string.h>

#include "ffi_check.h"

#ifndef FFI_CHECK_NO_REDIRECT

#undef malloc
#undef calloc
#undef realloc
#undef strdup
#undef free

#define malloc(n)     ffi_check_malloc_at((n), __FILE__, __LINE__)
#define calloc(c, n)  ffi_check_calloc_at((c), (n), __FILE__, __LINE__)
#define realloc(p, n) ffi_check_realloc_at((p), (n), __FILE__, __LINE__)
#define strdup(s)     ffi_check_strdup_at((s), __FILE__, __LINE__)
#define free(p)       ffi_check_free_at((p), __FILE__, __LINE__)

#endif /* FFI_CHECK_NO_REDIRECT */

#endif /* FFI_CHECK_REDIRECT_H */
