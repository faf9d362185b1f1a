/*
 * route.h - the placement decision: pins first, then the ring (pure).
 */
#ifndef TR_ROUTE_H
#define TR_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

struct pins;
struct ring;

/*
 * Returns the cluster index for the tenant; *pinned tells whether a pin
 * decided it (pinned may be NULL). pins may be NULL (no pins). Pins and
 * ring must number clusters alike (the configuration order).
 */
size_t route_lookup(const struct pins *pins, const struct ring *ring, const void *tenant,
		    size_t len, bool *pinned);

#endif /* TR_ROUTE_H */
