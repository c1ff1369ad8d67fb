/*
 * tagset.h - a set of short text tags, kept in the order they were added.
 *
 * A small C library with the shapes of real ones (an opaque handle with a
 * create/destroy pair, strings in and out, a callback with user data, a
 * struct passed by value, a length as an int), for ffi-check's worked
 * example of a -sys crate.
 */
#ifndef TAGSET_H
#define TAGSET_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A set of tags. Made by tagset_new, freed by tagset_free. */
typedef struct tagset tagset;

/** Limits a set enforces on what is added. */
struct tagset_limits {
    /** The most tags the set holds (0: no limit). */
    size_t max_tags;
    /** The longest tag, in bytes (0: no limit). */
    size_t max_len;
};

/** Called for each tag with the user data; a nonzero result stops the walk. */
typedef int (*tagset_visit_fn)(void *user, const char *tag);

/** Called with its user data when the set is freed (a destructor). */
typedef void (*tagset_free_fn)(void *user);

/** `len` bytes at `bytes`, not NUL-terminated: one tag of tagset_add_all. */
struct tagset_bytes {
    /** The first byte. */
    const char *bytes;
    /** The number of bytes. */
    size_t len;
};

/** A new, empty set without limits, or NULL when out of memory. */
tagset *tagset_new(void);

/**
 * Frees the set and its tags, first calling the destructor registered with
 * tagset_on_free, if any. NULL is allowed.
 */
void tagset_free(tagset *set);

/**
 * Registers `cb(user)` to be called by tagset_free; the set keeps `user`
 * until then. A later call replaces both, and the earlier `cb` is called
 * with its `user` at once. A NULL `cb` registers nothing.
 */
void tagset_on_free(tagset *set, tagset_free_fn cb, void *user);

/** Sets the limits that later additions must keep. */
void tagset_set_limits(tagset *set, struct tagset_limits limits);

/**
 * Adds a copy of the NUL-terminated `tag`: 1 if added, 0 if it was already
 * there, -1 if the limits refuse it or memory ran out.
 */
int tagset_add(tagset *set, const char *tag);

/**
 * Adds a copy of the `len` bytes at `bytes` (no NUL needed, none allowed)
 * as a tag; returns as tagset_add, and -1 for a negative `len`.
 */
int tagset_add_bytes(tagset *set, const char *bytes, int len);

/**
 * Adds a copy of each of the `n` tags at `items`, as tagset_add_bytes;
 * returns how many were added (a tag already there, refused, or too long
 * for an int is skipped).
 */
int tagset_add_all(tagset *set, const struct tagset_bytes *items, size_t n);

/**
 * Sets the set's label to the NUL-terminated `label` (NULL: none). The set
 * keeps the pointer, not a copy: the string must stay valid until the set
 * is freed or the label replaced.
 */
void tagset_set_label(tagset *set, const char *label);

/** The label last set with tagset_set_label, or NULL. */
const char *tagset_label(const tagset *set);

/** 1 if the NUL-terminated `tag` is in the set, else 0. */
int tagset_contains(const tagset *set, const char *tag);

/** The number of tags. */
size_t tagset_len(const tagset *set);

/**
 * The tag at `index`, owned by the set and valid until the set changes, or
 * NULL past the end.
 */
const char *tagset_get(const tagset *set, size_t index);

/**
 * Calls `visit(user, tag)` for each tag in order until it returns nonzero;
 * returns the number of calls made.
 */
size_t tagset_each(const tagset *set, tagset_visit_fn visit, void *user);

/**
 * The tags joined with the NUL-terminated `sep`, in a new string that the
 * caller frees with tagset_string_free; NULL when out of memory.
 */
char *tagset_join(const tagset *set, const char *sep);

/** Frees a string from tagset_join. NULL is allowed. */
void tagset_string_free(char *s);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TAGSET_H */
