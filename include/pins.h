/*
 * pins.h - pinned-tenant override table (pure: no I/O beyond reading a file
 * with stdio, which callers do off the event loop).
 *
 * A pin maps a tenant (opaque bytes, exact match: "42" and "042" differ) to a
 * cluster index. The table is built once, then read-only: it is shared by
 * snapshots and never changed after pins_seal().
 */
#ifndef TR_PINS_H
#define TR_PINS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define PINS_MAX_TENANT_LEN 255

struct pins;

/* Names of the clusters a pin may name; index = cluster index. */
struct pins_clusters {
	const char *const *names; /* borrowed */
	size_t n;
};

struct pins *pins_new(void) MUSTCHECK;
void pins_free(struct pins *p);

/*
 * Adds one pin. Returns 0; -EEXIST if the tenant is already pinned to a
 * different cluster (same cluster: 0, no change); -EINVAL for an empty or
 * too long tenant; -ENOMEM.
 */
int pins_add(struct pins *p, const void *tenant, size_t len, uint16_t cluster) MUSTCHECK;

/*
 * Loads a pins file: one "TENANT CLUSTER" per line (separated by spaces or
 * tabs), '#' starts a comment, blank lines are ignored. Every bad line is
 * reported (up to a limit) as "PATH:LINE: reason\n" appended to err (NUL
 * terminated, truncated to errlen). Returns the number of problems (0 = ok)
 * or -errno if the file could not be read (reason in err).
 * Reports are in line order, at most 20, then "... and N more\n". A tenant
 * pinned to two clusters names both lines ("at line N" is left out when the
 * first pin came from pins_add). Good lines are added even when others are
 * bad: discard the table unless the result is 0.
 */
int pins_load_file(struct pins *p, const char *path, const struct pins_clusters *clusters,
		   char *err, size_t errlen) MUSTCHECK;

/*
 * Makes the table read-only (releases slack memory). After this, pins_add
 * and pins_load_file are bugs (TR_ASSERT), and lookups may run concurrently.
 */
void pins_seal(struct pins *p);

/* Cluster index pinned for this tenant, or -1. */
int pins_lookup(const struct pins *p, const void *tenant, size_t len);
/* The same, with hash = XXH3_64bits(tenant, len) already computed (the ring's hash too). */
int pins_lookup_hashed(const struct pins *p, const void *tenant, size_t len, uint64_t hash);

size_t pins_count(const struct pins *p);

/*
 * A digest of the table that does not depend on the order pins were added,
 * with the cluster of each pin named (names[i] for index i, n of them), so
 * two routers with the same pins to the same cluster names agree. Also
 * counts the pins of each cluster into per_cluster[0..n) (may be NULL).
 * O(pins): call it off the event loop (config_load does).
 */
uint64_t pins_digest(const struct pins *p, const char *const *names, size_t n,
		     size_t *per_cluster);

/* Bytes the table has allocated (for logs and admin). */
size_t pins_memory(const struct pins *p);

/*
 * Changing the pins file (the admin console's PIN and UNPIN; blocking file
 * I/O: call off the event loop). pins_file_rewrite() copies the file at
 * path (a missing file reads as empty) to a new temporary file in the same
 * directory, leaving out every line pinning tenant and, when cluster is not
 * NULL, adding "TENANT CLUSTER" at the end; the copy is fsynced. Its name
 * goes to tmp (tmpcap bytes). *found tells whether a line was left out.
 * The caller checks tenant and cluster are writable (no blank, '#' or
 * control character). Returns 0, or -errno with the reason in err (no
 * temporary file is left then).
 *
 * pins_file_commit() renames tmp over path and fsyncs the directory, so the
 * change survives a crash; -errno with the reason in err (tmp is removed
 * if the rename failed).
 */
int pins_file_rewrite(const char *path, const void *tenant, size_t len, const char *cluster,
		      char *tmp, size_t tmpcap, bool *found, char *err, size_t errlen) MUSTCHECK;
int pins_file_commit(const char *tmp, const char *path, char *err, size_t errlen) MUSTCHECK;

#endif /* TR_PINS_H */
