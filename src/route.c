/*
 * route.c - the placement decision: a directory row wins, then a pin,
 * otherwise the ring (pure).
 *
 * Pins and ring use the same cluster numbering (the order of the clusters in
 * the configuration), so their answers are directly comparable. A directory
 * snapshot names its clusters, and is matched to the configuration by name.
 * This module does not look at health: a tenant whose cluster is down is
 * refused by the caller, never sent elsewhere, because stickiness is the
 * product.
 */
#include "route.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <xxhash.h>

#include "directory.h"
#include "pins.h"
#include "ring.h"

size_t route_lookup(const struct pins *pins, const struct ring *ring, const void *tenant,
                    size_t len, bool *pinned)
{
	/* Pins and ring hash the tenant the same way: hash it once. */
	uint64_t h = XXH3_64bits(tenant, len);
	int c = pins != NULL ? pins_lookup_hashed(pins, tenant, len, h) : -1;

	if (pinned != NULL)
		*pinned = c >= 0;
	if (c >= 0)
		return (size_t)c;
	return ring_lookup_hash(ring, h);
}

void route_place(const struct dir *d, const struct pins *pins, const struct ring *ring,
                 const char *const *names, size_t n, const void *tenant, size_t len,
                 struct route_place *out)
{
	/* Directory, pins and ring all hash the tenant the same way: once. */
	uint64_t h = XXH3_64bits(tenant, len);
	const char *name = NULL;
	enum dir_state st = dir_lookup(d, tenant, len, h, &name);
	int c;

	out->dir_cluster = NULL;
	if (st != DIR_NONE) {
		out->source = ROUTE_DIRECTORY;
		out->state = st;
		out->cluster = -1;
		out->dir_cluster = name;
		for (size_t i = 0; name != NULL && i < n; i++) {
			if (strcmp(names[i], name) == 0) {
				out->cluster = (int)i;
				break;
			}
		}
		return;
	}
	out->state = DIR_NONE;
	c = pins != NULL ? pins_lookup_hashed(pins, tenant, len, h) : -1;
	if (c >= 0) {
		out->source = ROUTE_PIN;
		out->cluster = c;
		return;
	}
	out->source = ROUTE_RING;
	out->cluster = (int)ring_lookup_hash(ring, h);
}
