/* wordlist.h - a growable list of words (see wordlist.c). */
#ifndef WORDLIST_H
#define WORDLIST_H

#include <stddef.h>

typedef struct wordlist wordlist;

/* An empty list; NULL when out of memory. */
wordlist *wl_new(void);

/* Appends a copy of word; 0 on success, -1 when out of memory. */
int wl_add(wordlist *wl, const char *word);

/* The number of words. */
size_t wl_len(const wordlist *wl);

/* Word i (owned by the list), or NULL past the end. */
const char *wl_get(const wordlist *wl, size_t i);

/* Frees the list and its words; NULL is ok. */
void wl_free(wordlist *wl);

/* The bug on purpose: frees the list but not its words. */
void wl_free_forgetting_words(wordlist *wl);

#endif /* WORDLIST_H */
