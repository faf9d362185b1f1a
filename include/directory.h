/*
 * directory.h - the tenant directory as the router holds it (pure: no I/O,
 * no libuv, no libpq).
 *
 * The directory is a table in PostgreSQL (README, "Tenant directory"):
 * tenant -> cluster, with a state and a version. dirsync.c fetches it with
 * COPY ... TO STDOUT (text format) and feeds the rows here; this module
 * parses them and keeps them as an immutable, refcounted snapshot:
 *
 *   - a base table built once from a full load (millions of rows, the
 *     pins table's open addressing: one lookup is one or two cache misses);
 *   - a small delta of the rows changed since, consulted first. Applying a
 *     change copies the delta, never the base, so a change to one tenant of
 *     ten million is a few microseconds of work, done off the event loop.
 *
 * A row that names a cluster this router does not know, or a state that is
 * not active, moving or blocked, is kept as DIR_INVALID: the router refuses
 * that tenant (it cannot be sure where it lives) and routes every other one.
 * Such rows are counted (dir_ignored) and reported through the builder's
 * callback so the caller can log them.
 */
#ifndef TR_DIRECTORY_H
#define TR_DIRECTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "proto.h"

#define DIR_MAX_TENANT_LEN 255
#define DIR_MAX_CLUSTERS   4096 /* a cluster index fits 12 bits */
#define DIR_MAX_MOVING     4096 /* moving tenants a snapshot lists (the fence's) */

enum dir_state {
	DIR_NONE,    /* no row: pins, then the ring decide */
	DIR_ACTIVE,  /* routed to its cluster */
	DIR_MOVING,  /* being moved: new sessions are not let through */
	DIR_BLOCKED, /* refused */
	DIR_INVALID, /* a row this router cannot use (unknown cluster or state): refused */
};

const char *dir_state_name(enum dir_state s);

/* One row of COPY (SELECT tenant, cluster, state, version ...) TO STDOUT, parsed. */
struct dir_row {
	const uint8_t *tenant; /* borrowed: the caller's unescape buffer */
	size_t tlen;
	const char *cluster; /* borrowed, not NUL terminated */
	size_t clen;
	const char *state; /* borrowed, not NUL terminated */
	size_t slen;
	int64_t version;
};

/*
 * Parses one COPY text-format row (without its '\n'): four tab-separated
 * fields, backslash escapes undone (\t, \n, \\, \NNN octal, \xHH, ...).
 * Unescaped bytes go to buf (cap bytes; DIR_ROW_BUF is always enough for a
 * row whose fields fit their limits). PROTO_BAD for a wrong field count, a
 * NULL (\N) or empty tenant, cluster or state, a field over its limit, or a
 * version that is not a decimal integer. Never PROTO_NEED_MORE.
 */
#define DIR_ROW_BUF 1024
enum proto_status dir_parse_row(const uint8_t *p, size_t n, uint8_t *buf, size_t cap,
                                struct dir_row *out) MUSTCHECK;

/*
 * Cuts a byte stream into '\n'-terminated lines (a cache file, read in
 * chunks). Lines longer than DIR_LINE_MAX are reported as overlong and
 * skipped to their end. The framer owns a DIR_LINE_MAX buffer for a line
 * cut across chunks.
 */
#define DIR_LINE_MAX 4096
struct dir_lines {
	uint8_t buf[DIR_LINE_MAX];
	size_t len;
	bool skipping;
};
/* Called for each whole line (without '\n'); overlong: p is NULL and n 0. */
typedef void (*dir_line_fn)(void *arg, const uint8_t *p, size_t n);
void dir_lines_init(struct dir_lines *l);
void dir_lines_feed(struct dir_lines *l, const uint8_t *p, size_t n, dir_line_fn fn, void *arg);
/* End of stream: a last line without '\n' is passed on. */
void dir_lines_finish(struct dir_lines *l, dir_line_fn fn, void *arg);

/* The snapshot: base + delta, immutable, shared by refcount. */
struct dir;
struct dir_builder;

/* Told about each row the builder keeps as DIR_INVALID (for a log line). */
typedef void (*dir_bad_fn)(void *arg, const struct dir_row *r, const char *why);

/*
 * A builder of a full snapshot over the cluster names (index = position;
 * copied). expect: rows to size the table for (0: grow as needed). bad may
 * be NULL. NULL when out of memory or with more than DIR_MAX_CLUSTERS.
 */
struct dir_builder *dir_builder_new(const char *const *clusters, size_t nclusters, size_t expect,
                                    dir_bad_fn bad, void *arg) MUSTCHECK;
/* Adds a row: 0 kept, 1 kept as DIR_INVALID, -ENOMEM (the builder is then only freeable). */
int dir_builder_add(struct dir_builder *b, const struct dir_row *r) MUSTCHECK;
/*
 * Seals the table into a snapshot (one reference, the caller's) and frees
 * the builder. prev (may be NULL) carries over when each moving tenant was
 * first seen moving; now_ms stamps the new ones. NULL when out of memory.
 */
struct dir *dir_builder_finish(struct dir_builder *b, const struct dir *prev,
                               uint64_t now_ms) MUSTCHECK;
void dir_builder_free(struct dir_builder *b);

/*
 * A new snapshot: old with n more rows applied over it (a later row of a
 * tenant wins). Shares old's base; copies old's delta (small) and adds the
 * rows. bad as for the builder. NULL when out of memory.
 */
struct dir *dir_apply(const struct dir *old, const struct dir_row *rows, size_t n, uint64_t now_ms,
                      dir_bad_fn bad, void *arg) MUSTCHECK;

struct dir *dir_ref(struct dir *d);
/* Drops a reference; the last one frees (a base of millions of rows: off the loop). */
void dir_unref(struct dir *d);

/*
 * The tenant's state, and for DIR_ACTIVE/DIR_MOVING/DIR_BLOCKED its cluster's
 * name (borrowed from d, NUL terminated) in *cluster. hash is
 * XXH3_64bits(tenant, len), the hash pins and ring use. d may be NULL.
 */
enum dir_state dir_lookup(const struct dir *d, const void *tenant, size_t len, uint64_t hash,
                          const char **cluster);

/* The highest version among the rows (0: none). */
int64_t dir_version(const struct dir *d);
/* Rows held (base and delta, a tenant changed in the delta counted once per copy). */
size_t dir_rows(const struct dir *d);
/* Rows kept as DIR_INVALID, in the base and the delta. */
size_t dir_ignored(const struct dir *d);
/* Rows in the delta (the caller rebuilds the base when it grows). */
size_t dir_delta_rows(const struct dir *d);
/* Bytes allocated (base shared with other snapshots counted whole). */
size_t dir_memory(const struct dir *d);

/* Tenants in state moving (at most DIR_MAX_MOVING), and since when this router knows it. */
size_t dir_nmoving(const struct dir *d);
const uint8_t *dir_moving(const struct dir *d, size_t i, size_t *len, uint64_t *since_ms);

/* The cluster names the snapshot was built over (for rebuilding after a reload). */
size_t dir_nclusters(const struct dir *d);
const char *dir_cluster_name(const struct dir *d, size_t i);

#endif /* TR_DIRECTORY_H */
