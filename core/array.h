#ifndef LOOM_CORE_ARRAY_H
#define LOOM_CORE_ARRAY_H

#include <stddef.h>

/* Makes room for `need` elements of `size` bytes in *items (capacity *cap),
 * doubling. Returns 0 or LOOM_ENOMEM with a message naming `what`. */
int loom_array_reserve(void **items, size_t *cap, size_t need, size_t size, const char *what);

#endif
