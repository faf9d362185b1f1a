/*
 * route.h - the placement decision: directory, then pins, then the ring (pure).
 */
#ifndef TR_ROUTE_H
#define TR_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "directory.h"

struct dir;
struct pins;
struct ring;

/*
 * Returns the cluster index for the tenant; *pinned tells whether a pin
 * decided it (pinned may be NULL). pins may be NULL (no pins). Pins and
 * ring must number clusters alike (the configuration order).
 */
size_t route_lookup(const struct pins *pins, const struct ring *ring, const void *tenant,
		    size_t len, bool *pinned);

enum route_source { ROUTE_DIRECTORY, ROUTE_PIN, ROUTE_RING };

/* Where a tenant goes, and why. */
struct route_place {
	enum route_source source;
	enum dir_state state;    /* DIR_NONE unless source is ROUTE_DIRECTORY */
	int cluster;             /* index in names; -1: the directory names a cluster not there */
	const char *dir_cluster; /* borrowed from the snapshot: the directory's cluster name */
};

/*
 * The one precedence rule: a directory row (d may be NULL) wins over a pin,
 * a pin over the ring. names[0..n) are the configuration's cluster names
 * (the numbering of pins and ring); a directory row's cluster is found by
 * name, since the snapshot may have been built over an older configuration.
 * A DIR_INVALID row, or a row naming a cluster not in names, gives cluster
 * -1: the caller refuses the tenant.
 */
void route_place(const struct dir *d, const struct pins *pins, const struct ring *ring,
                 const char *const *names, size_t n, const void *tenant, size_t len,
                 struct route_place *out);

#endif /* TR_ROUTE_H */
