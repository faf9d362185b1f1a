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

#include "pins.h"
#include "ring.h"

size_t route_lookup(const struct pins *pins, const struct ring *ring, const void *tenant,
                    size_t len, bool *pinned)
{
	int c = pins != NULL ? pins_lookup(pins, tenant, len) : -1;

	if (pinned != NULL)
		*pinned = c >= 0;
	if (c >= 0)
		return (size_t)c;
	return ring_lookup(ring, tenant, len);
}
