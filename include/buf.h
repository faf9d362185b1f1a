/*
 * buf.h - room in a growing byte buffer, the one way every module grows one.
 *
 * Pure (no I/O); a header of its own because, unlike common.h, it allocates.
 */
#ifndef TR_BUF_H
#define TR_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/*
 * Room for need bytes in the buffer p of capacity *cap: its capacity
 * doubles from first (when empty) until need fits, but never past max (the
 * caller has checked need <= max). Returns the buffer, moved perhaps, and
 * sets *cap; NULL when out of memory, with p and *cap as they were.
 */
static inline void *buf_grow(void *p, size_t *cap, size_t need, size_t first, size_t max)
{
	size_t c = *cap ? *cap : first;
	void *q;

	if (need <= *cap)
		return p;
	while (c < need)
		c *= 2;
	if (c > max)
		c = max;
	q = realloc(p, c);
	if (q != NULL)
		*cap = c;
	return q;
}

#endif /* TR_BUF_H */
