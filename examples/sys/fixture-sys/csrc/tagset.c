/*
 * tagset.c - see tagset.h.  Plain C: malloc, realloc and free from
 * <stdlib.h>.  (Built with ffi-check, the -sys crate's build script
 * force-includes ffi_check_redirect.h, which routes them through ffi-check.)
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tagset.h"

struct tagset {
    char **tags;
    size_t len;
    size_t cap;
    struct tagset_limits limits;
    tagset_free_fn on_free;
    void *on_free_user;
    const char *label;
};

tagset *tagset_new(void)
{
    tagset *set = malloc(sizeof *set);
    if (set == NULL) {
        return NULL;
    }
    set->tags = NULL;
    set->len = 0;
    set->cap = 0;
    set->limits.max_tags = 0;
    set->limits.max_len = 0;
    set->on_free = NULL;
    set->on_free_user = NULL;
    set->label = NULL;
    return set;
}

void tagset_free(tagset *set)
{
    size_t i;
    if (set == NULL) {
        return;
    }
    if (set->on_free != NULL) {
        set->on_free(set->on_free_user);
    }
    for (i = 0; i < set->len; i++) {
        free(set->tags[i]);
    }
    free(set->tags);
    free(set);
}

void tagset_on_free(tagset *set, tagset_free_fn cb, void *user)
{
    tagset_free_fn old = set->on_free;
    void *old_user = set->on_free_user;
    set->on_free = cb;
    set->on_free_user = cb != NULL ? user : NULL;
    if (old != NULL) {
        old(old_user);
    }
}

void tagset_set_limits(tagset *set, struct tagset_limits limits)
{
    set->limits = limits;
}

static int find(const tagset *set, const char *tag, size_t len)
{
    size_t i;
    for (i = 0; i < set->len; i++) {
        if (strlen(set->tags[i]) == len && memcmp(set->tags[i], tag, len) == 0) {
            return 1;
        }
    }
    return 0;
}

int tagset_add_bytes(tagset *set, const char *bytes, int len)
{
    char *copy;
    size_t n;
    if (len < 0 || memchr(bytes, '\0', (size_t)len) != NULL) {
        return -1;
    }
    n = (size_t)len;
    if (find(set, bytes, n)) {
        return 0;
    }
    if ((set->limits.max_tags != 0 && set->len >= set->limits.max_tags) ||
        (set->limits.max_len != 0 && n > set->limits.max_len)) {
        return -1;
    }
    if (set->len == set->cap) {
        size_t cap = set->cap == 0 ? 4 : 2 * set->cap;
        char **tags = realloc(set->tags, cap * sizeof *tags);
        if (tags == NULL) {
            return -1;
        }
        set->tags = tags;
        set->cap = cap;
    }
    copy = malloc(n + 1);
    if (copy == NULL) {
        return -1;
    }
    memcpy(copy, bytes, n);
    copy[n] = '\0';
    set->tags[set->len++] = copy;
    return 1;
}

int tagset_add(tagset *set, const char *tag)
{
    size_t n = strlen(tag);
    if (n > 0x7fffffff) {
        return -1;
    }
    return tagset_add_bytes(set, tag, (int)n);
}

int tagset_add_all(tagset *set, const struct tagset_bytes *items, size_t n)
{
    size_t i;
    int added = 0;
    for (i = 0; i < n; i++) {
        if (items[i].len <= INT_MAX &&
            tagset_add_bytes(set, items[i].bytes, (int)items[i].len) == 1) {
            added++;
        }
    }
    return added;
}

void tagset_set_label(tagset *set, const char *label)
{
    set->label = label;
}

const char *tagset_label(const tagset *set)
{
    return set->label;
}

int tagset_contains(const tagset *set, const char *tag)
{
    return find(set, tag, strlen(tag));
}

size_t tagset_len(const tagset *set)
{
    return set->len;
}

const char *tagset_get(const tagset *set, size_t index)
{
    return index < set->len ? set->tags[index] : NULL;
}

size_t tagset_each(const tagset *set, tagset_visit_fn visit, void *user)
{
    size_t i;
    for (i = 0; i < set->len; i++) {
        if (visit(user, set->tags[i]) != 0) {
            return i + 1;
        }
    }
    return set->len;
}

char *tagset_join(const tagset *set, const char *sep)
{
    size_t i, total = 1, seplen = strlen(sep);
    char *out, *at;
    for (i = 0; i < set->len; i++) {
        total += strlen(set->tags[i]) + (i > 0 ? seplen : 0);
    }
    out = malloc(total);
    if (out == NULL) {
        return NULL;
    }
    at = out;
    for (i = 0; i < set->len; i++) {
        size_t n = strlen(set->tags[i]);
        if (i > 0) {
            memcpy(at, sep, seplen);
            at += seplen;
        }
        memcpy(at, set->tags[i], n);
        at += n;
    }
    *at = '\0';
    return out;
}

void tagset_string_free(char *s)
{
    free(s);
}
