/*
 * ring.c - consistent-hash ring of clusters (pure: no I/O).
 *
 * Placement is the algorithm documented in include/ring.h and README.md
 * ("Ring algorithm"); other tools reimplement it, so nothing here may change
 * which point a tenant lands on. ring_build() hashes every virtual node once
 * and keeps one flat array of points sorted by (hash, cluster name);
 * ring_lookup() is a binary search over it, because it runs on every connect.
 *
 * This module does not know about health, pins or configuration files: it
 * maps bytes to a member index and nothing else.
 *
 * Invariants once built: the ring is immutable, holds at least one point, and
 * its points are sorted by (hash, cluster name), so the first point whose
 * hash is >= the tenant's hash is also the tie-break winner.
 */
#include "ring.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "common.h"

/* Member indexes are stored as uint16 elsewhere (pins), so cap them here too. */
#define RING_MAX_MEMBERS 65535u

/*
 * A guard against configurations that would need gigabytes of points
 * (65535 clusters * 65536 points each is 4 billion): 2^26 points is 1 GiB.
 */
#define RING_MAX_POINTS (1u << 26)

struct ring_point {
	uint64_t hash;
	uint32_t member; /* index into the members given to ring_build */
};

struct ring {
	size_t npoints;             /* >= 1 */
	size_t nmembers;            /* >= 1 */
	struct ring_point points[]; /* sorted by (hash, cluster name) */
};

/* Appends "; "-separated reasons to err, always NUL terminated. */
PRINTF_LIKE(3, 4)
static void add_reason(char *err, size_t errlen, const char *fmt, ...)
{
	size_t used;
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	used = strnlen(err, errlen);
	if (used >= errlen - 1)
		return;
	if (used > 0) {
		snprintf(err + used, errlen - used, "; ");
		used = strnlen(err, errlen);
		if (used >= errlen - 1)
			return;
	}
	va_start(ap, fmt);
	vsnprintf(err + used, errlen - used, fmt, ap);
	va_end(ap);
}

/* A member's name next to its index, sorted by name to rank the names. */
struct named {
	const char *name; /* borrowed: the caller's member */
	uint32_t member;
};

static int cmp_named(const void *a, const void *b)
{
	const struct named *na = a, *nb = b;

	return strcmp(na->name, nb->name);
}

/*
 * While sorting, a point's member field holds the rank of its cluster's name
 * (rank order = strcmp order), so (hash, rank) order is (hash, name) order
 * and the comparator needs no context.
 */
static int cmp_point(const void *a, const void *b)
{
	const struct ring_point *pa = a, *pb = b;

	if (pa->hash != pb->hash)
		return pa->hash < pb->hash ? -1 : 1;
	if (pa->member != pb->member)
		return pa->member < pb->member ? -1 : 1;
	return 0;
}

/* Checks everything ring_build needs; appends every problem to err. */
static bool validate(const struct ring_member *members, size_t n, uint32_t vnodes, uint64_t *total,
                     char *err, size_t errlen)
{
	bool ok = true;
	size_t i;

	*total = 0;
	if (n == 0) {
		add_reason(err, errlen, "no clusters");
		return false;
	}
	if (n > RING_MAX_MEMBERS) {
		add_reason(err, errlen, "too many clusters: %zu (at most %u)", n, RING_MAX_MEMBERS);
		return false;
	}
	if (vnodes == 0) {
		add_reason(err, errlen, "vnodes must be at least 1");
		ok = false;
	}
	for (i = 0; i < n; i++) {
		const struct ring_member *m = &members[i];
		uint64_t pts = (uint64_t)vnodes * m->weight;

		if (m->name == NULL || m->name[0] == '\0') {
			add_reason(err, errlen, "cluster %zu has an empty name", i);
			ok = false;
			continue;
		}
		if (m->weight == 0) {
			add_reason(err, errlen, "cluster \"%s\": weight must be at least 1",
			           m->name);
			ok = false;
		}
		if (pts > RING_MAX_VNODES) {
			add_reason(err, errlen,
			           "cluster \"%s\": vnodes * weight = %" PRIu64 " (at most %u)",
			           m->name, pts, RING_MAX_VNODES);
			ok = false;
		}
		*total += pts;
	}
	if (ok && *total > RING_MAX_POINTS) {
		add_reason(err, errlen, "ring too large: %" PRIu64 " points (at most %u)", *total,
		           RING_MAX_POINTS);
		ok = false;
	}
	return ok;
}

/* Writes the decimal digits of v at p; returns the number written. */
static size_t put_decimal(char *p, uint32_t v)
{
	char tmp[10];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	for (i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

struct ring *ring_build(const struct ring_member *members, size_t n, uint32_t vnodes, char *err,
                        size_t errlen)
{
	struct ring *r = NULL;
	struct named *byname = NULL;
	char *key = NULL;
	size_t maxname = 0, i, k = 0;
	uint64_t total;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (members == NULL)
		n = 0;
	if (!validate(members, n, vnodes, &total, err, errlen))
		return NULL;

	/* Rank clusters by name: duplicates become neighbours. */
	byname = malloc(n * sizeof(*byname));
	if (byname == NULL)
		goto fail_oom;
	for (i = 0; i < n; i++) {
		size_t len = strlen(members[i].name);

		byname[i] = (struct named){.name = members[i].name, .member = (uint32_t)i};
		if (len > maxname)
			maxname = len;
	}
	qsort(byname, n, sizeof(*byname), cmp_named);
	for (i = 1; i < n; i++) {
		if (strcmp(byname[i - 1].name, byname[i].name) == 0) {
			add_reason(err, errlen, "duplicate cluster name \"%s\"", byname[i].name);
			goto fail;
		}
	}

	r = malloc(sizeof(*r) + (size_t)total * sizeof(r->points[0]));
	key = malloc(maxname + 1 + 10 + 1); /* "<name>#<j>", j < 2^32 */
	if (r == NULL || key == NULL)
		goto fail_oom;
	r->npoints = (size_t)total;
	r->nmembers = n;

	for (i = 0; i < n; i++) {
		const struct ring_member *m = &members[byname[i].member];
		uint32_t pts = vnodes * m->weight; /* validated: <= RING_MAX_VNODES */
		size_t namelen = strlen(m->name);
		uint32_t j;

		memcpy(key, m->name, namelen);
		key[namelen] = '#';
		for (j = 0; j < pts; j++) {
			size_t len = namelen + 1 + put_decimal(key + namelen + 1, j);

			r->points[k].hash = XXH3_64bits(key, len);
			r->points[k].member = (uint32_t)i; /* the name's rank, for now */
			k++;
		}
	}
	TR_ASSERT(k == r->npoints);
	qsort(r->points, r->npoints, sizeof(r->points[0]), cmp_point);

	/* Ranks back to the caller's member indexes. */
	for (k = 0; k < r->npoints; k++)
		r->points[k].member = byname[r->points[k].member].member;

	free(key);
	free(byname);
	return r;

fail_oom:
	add_reason(err, errlen, "out of memory");
fail:
	free(key);
	free(r);
	free(byname);
	return NULL;
}

void ring_free(struct ring *r)
{
	free(r);
}

size_t ring_lookup(const struct ring *r, const void *tenant, size_t len)
{
	return ring_lookup_hash(r, XXH3_64bits(tenant, len));
}

size_t ring_lookup_hash(const struct ring *r, uint64_t h)
{
	const struct ring_point *base = r->points;
	size_t n = r->npoints, idx;

	/*
	 * Branch-free lower bound: the first point with hash >= h lies in
	 * [base, base + n] throughout. Equal hashes are ordered by cluster
	 * name, so the first of them is the documented tie-break winner.
	 */
	while (n > 1) {
		size_t half = n / 2;

		base = base[half - 1].hash < h ? base + half : base;
		n -= half;
	}
	idx = (size_t)(base - r->points) + (base->hash < h);
	if (idx == r->npoints)
		idx = 0; /* past the last point: wrap to the first */
	return r->points[idx].member;
}

size_t ring_points(const struct ring *r)
{
	return r->npoints;
}

void ring_shares(const struct ring *r, double *share, size_t n)
{
	for (size_t i = 0; i < n; i++)
		share[i] = 0;
	if (r->npoints == 1) {
		if (r->points[0].member < n)
			share[r->points[0].member] = 1;
		return;
	}
	/* A point owns the arc from the previous point up to itself; the first wraps around. */
	for (size_t i = 0; i < r->npoints; i++) {
		uint64_t prev = r->points[i ? i - 1 : r->npoints - 1].hash;
		uint64_t arc = r->points[i].hash - prev; /* mod 2^64: the wrap for i = 0 */

		if (r->points[i].member < n)
			share[r->points[i].member] += (double)arc / 18446744073709551616.0;
	}
}
