/*
 * ffi_check.h - the C side of ffi-check.
 *
 * These functions are implemented by the Rust library (`ffi_check`); link
 * the C code that uses them together with it.
 *
 * Memory returned by ffi_check_malloc and friends is real libc malloc
 * memory, so it is safe to hand to code expecting malloc'd memory.  In
 * addition, ffi-check tracks it as C memory, remembering the C call site
 * (file and line) that allocated it.  Free it with ffi_check_free from C,
 * or from Rust with ffi_check::c_free or by owning it in a CBox.
 *
 * Use the macros (ffi_check_malloc, ...) rather than the *_at functions:
 * they record __FILE__ and __LINE__ for you.  To route a whole C file's
 * malloc/calloc/realloc/strdup/free through them without editing it,
 * include "ffi_check_redirect.h" after the system headers.
 */
#ifndef FFI_CHECK_H
#define FFI_CHECK_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Like malloc(size); the block is tracked as C memory allocated at file:line. */
void *ffi_check_malloc_at(size_t size, const char *file, int line);

/* Like calloc(count, size); tracked as C memory allocated at file:line. */
void *ffi_check_calloc_at(size_t count, size_t size, const char *file, int line);

/* Like realloc(ptr, size); ptr must be NULL or come from ffi_check_malloc
 * and friends.  The old block stops being tracked, the new one is tracked
 * as allocated at file:line. */
void *ffi_check_realloc_at(void *ptr, size_t size, const char *file, int line);

/* Like strdup(s); the copy is tracked as C memory allocated at file:line. */
char *ffi_check_strdup_at(const char *s, const char *file, int line);

/* Like free(ptr) for memory from ffi_check_malloc and friends; NULL is ok.
 * Freeing anything else (Rust memory, a pointer already freed) is reported. */
void ffi_check_free_at(void *ptr, const char *file, int line);

/* Declares that C keeps ptr after the current call returns.  Only legal for
 * pinned Rust memory or C memory; keeping a pointer to other Rust memory is
 * reported. */
void ffi_check_retain_at(const void *ptr, const char *file, int line);

/* Declares that C has dropped a pointer it kept with ffi_check_retain. */
void ffi_check_release_at(const void *ptr, const char *file, int line);

/* Registers [ptr, ptr + len) - a global table, a static slot, a structure
 * allocated without ffi-check - as C storage that mode 2 (FFI_CHECK=2)
 * scans: a pointer to unpinned Rust memory found there after a call
 * returns is reported as kept by C.  The range must stay readable until
 * ffi_check_remove_root(ptr).  Registering the same ptr again replaces the
 * root.  Returns 1 when the root is registered, 0 when it is refused: a
 * range that is not readable memory for its whole length, or whose end
 * overflows, is reported (InvalidRoot) and not registered. */
int ffi_check_add_root_at(const void *ptr, size_t len, const char *file, int line);

/* Unregisters the root that starts at ptr. */
void ffi_check_remove_root_at(const void *ptr, const char *file, int line);

/* Convenience macros recording the caller's file and line. */
#define ffi_check_malloc(n)     ffi_check_malloc_at((n), __FILE__, __LINE__)
#define ffi_check_calloc(c, n)  ffi_check_calloc_at((c), (n), __FILE__, __LINE__)
#define ffi_check_realloc(p, n) ffi_check_realloc_at((p), (n), __FILE__, __LINE__)
#define ffi_check_strdup(s)     ffi_check_strdup_at((s), __FILE__, __LINE__)
#define ffi_check_free(p)       ffi_check_free_at((p), __FILE__, __LINE__)
#define ffi_check_retain(p)     ffi_check_retain_at((p), __FILE__, __LINE__)
#define ffi_check_release(p)    ffi_check_release_at((p), __FILE__, __LINE__)
#define ffi_check_add_root(p, n) ffi_check_add_root_at((p), (n), __FILE__, __LINE__)
#define ffi_check_remove_root(p) ffi_check_remove_root_at((p), __FILE__, __LINE__)

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FFI_CHECK_H */
