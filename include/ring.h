/*
 * ring.h - consistent-hash ring of clusters (pure: no I/O, no libuv, no libpq).
 *
 * The placement algorithm is part of our public contract (README.md "Ring
 * algorithm"): any other tool must be able to compute the same answer.
 *   - A tenant's hash is XXH3_64bits(tenant bytes) (seed 0).
 *   - Cluster i with weight w gets vnodes * w points; point j (0-based) is
 *     XXH3_64bits of the ASCII string "<cluster name>#<j>" (j in decimal).
 *   - Points are sorted by (hash, cluster name). A tenant belongs to the
 *     cluster of the first point whose hash is >= the tenant's hash, wrapping
 *     to the first point.
 * Because a cluster's points depend only on its own name, adding a cluster
 * moves only the tenants that now land on it, and never between old ones.
 */
#ifndef TR_RING_H
#define TR_RING_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define RING_MAX_VNODES 65536u	/* vnodes * weight per cluster, at most */

struct ring;

struct ring_member {
	const char *name; /* borrowed: copied by ring_build */
	uint32_t weight;  /* >= 1 */
};

/*
 * Builds a ring over n members (n >= 1). Returns NULL on bad input or out of
 * memory, with the reason in err (every problem found, joined by "; ",
 * truncated to errlen; err may be NULL). The caller owns the ring (ring_free).
 */
struct ring *ring_build(const struct ring_member *members, size_t n, uint32_t vnodes, char *err,
			size_t errlen) MUSTCHECK;
void ring_free(struct ring *r);

/* Index (into the members given to ring_build) of the tenant's cluster. */
size_t ring_lookup(const struct ring *r, const void *tenant, size_t len);

/* The same, given the tenant's hash XXH3_64bits(tenant, len). */
size_t ring_lookup_hash(const struct ring *r, uint64_t hash);

/* Number of points on the ring (for logs and admin). */
size_t ring_points(const struct ring *r);

/*
 * The share of the hash space each member owns (the tenants it gets, on
 * average): share[i] for member i, summing to 1. n is the number of members
 * the ring was built with. O(points); for status pages, not the data path.
 */
void ring_shares(const struct ring *r, double *share, size_t n);

#endif /* TR_RING_H */
