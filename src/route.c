/*
 * route.c - the placement decision: a pin wins, otherwise the ring (pure).
 *
 * Pins and ring use the same cluster numbering (the order of the clusters in
 * the configuration), so their answers are directly comparable. This module
 * does not look at health: a tenant whose cluster is down is refused by the
 * caller, never sent elsewhere, because stickiness is the product.
 */
#include "route.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <xxhash.h>

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
