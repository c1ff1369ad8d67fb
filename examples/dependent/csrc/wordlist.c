/*
 * wordlist.c - a growable list of words, written as ordinary C: malloc,
 * realloc, strdup, free.  Including ffi_check_redirect.h (found through
 * DEP_FFI_CHECK_INCLUDE) routes them through ffi-check, so every block is
 * tracked with this file's line numbers and every free is checked.
 */
#define _POSIX_C_SOURCE 200809L

#include <stddef.h>

#include "ffi_check_redirect.h"

#include "wordlist.h"

struct wordlist {
    char **words;
    size_t len;
    size_t cap;
};

wordlist *wl_new(void) {
    wordlist *wl = malloc(sizeof *wl);
    if (wl != NULL) {
        wl->words = NULL;
        wl->len = 0;
        wl->cap = 0;
    }
    return wl;
}

int wl_add(wordlist *wl, const char *word) {
    char *copy;
    if (wl->len == wl->cap) {
        size_t cap = wl->cap == 0 ? 4 : wl->cap * 2;
        char **words = realloc(wl->words, cap * sizeof *words);
        if (words == NULL) {
            return -1;
        }
        wl->words = words;
        wl->cap = cap;
    }
    copy = strdup(word);
    if (copy == NULL) {
        return -1;
    }
    wl->words[wl->len++] = copy;
    return 0;
}

size_t wl_len(const wordlist *wl) {
    return wl->len;
}

const char *wl_get(const wordlist *wl, size_t i) {
    return i < wl->len ? wl->words[i] : NULL;
}

void wl_free(wordlist *wl) {
    size_t i;
    if (wl == NULL) {
        return;
    }
    for (i = 0; i < wl->len; i++) {
        free(wl->words[i]);
    }
    free(wl->words);
    free(wl);
}

void wl_free_forgetting_words(wordlist *wl) {
    if (wl != NULL) {
        free(wl->words);
        free(wl);
    }
}
