/*
 * dirsync.h - keeps this router's copy of the tenant directory current, on
 * a thread of its own running libpq (README, "Tenant directory").
 *
 * The thread loads the whole table with COPY at start and every refresh,
 * LISTENs on the schema's channel and fetches the rows above the version it
 * holds when told of a commit, and writes this router's row in routers
 * every heartbeat (the fence: applied version, live sessions of each moving
 * tenant). Each new copy is an immutable snapshot (directory.h) swapped in
 * under a write lock; lookups take the read lock for the lookup only, so
 * no event loop ever waits for libpq, and no loop ever frees a snapshot.
 *
 * Without contact for directory_lease (measured from the last heartbeat
 * the directory accepted), the copy is stale: new sessions are refused and
 * live ones ended (dirsync_sure() is false), unless directory_stale = serve.
 */
#ifndef TR_DIRSYNC_H
#define TR_DIRSYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"
#include "route.h"

struct config;
struct dirsync;

/* Called once on the loop given to dirsync_start, when a first copy is there. */
typedef void (*dirsync_ready_fn)(void *arg);

/* nworkers: event loops that report their sessions (dirsync_report). NULL: out of memory. */
struct dirsync *dirsync_new(const struct config *cfg, size_t nworkers) MUSTCHECK;
/* Starts the thread. ready runs on loop when the first copy (or the cache file) is loaded. */
int dirsync_start(struct dirsync *ds, uv_loop_t *loop, dirsync_ready_fn ready, void *arg) MUSTCHECK;
/* A reload: new clusters, fingerprint or timings; the thread reloads the whole table. */
void dirsync_reconfigure(struct dirsync *ds, const struct config *cfg);
/* Stops and joins the thread (a blocked libpq call ends within its timeout). */
void dirsync_stop(struct dirsync *ds);
void dirsync_free(struct dirsync *ds);

/*
 * Where the tenant goes: route_place() over the current snapshot, cfg's
 * pins and ring (ds may be NULL: no directory). Returns false when the copy
 * is stale and directory_stale = refuse: the caller refuses the tenant.
 * out->dir_cluster is NULL on return (the snapshot is not held). Any thread.
 */
bool dirsync_place(struct dirsync *ds, const struct config *cfg, const void *tenant, size_t len,
                   struct route_place *out);

/* False when the copy is stale and directory_stale = refuse. Any thread. */
bool dirsync_sure(struct dirsync *ds);

/* The moving tenants of the current snapshot, copied (the caller frees *out). */
struct dirsync_moving {
	uint64_t since_ms; /* when this router first saw it moving (uv_hrtime ms) */
	size_t len;
	uint8_t tenant[256];
	char cluster[64]; /* the row's cluster: the one it is moved from */
};
size_t dirsync_moving(struct dirsync *ds, struct dirsync_moving **out, int64_t *version);

/*
 * A worker's count of its live sessions per moving tenant, made from the
 * snapshot of that version (moving[i] has counts[i]). The heartbeat reports
 * the lowest version all workers have reported, and the sum of the counts.
 */
void dirsync_report(struct dirsync *ds, size_t worker, int64_t version,
                    const struct dirsync_moving *moving, const size_t *counts, size_t n);

/* For logs, metrics and admin. Any thread. */
struct dirsync_status {
	bool loaded;     /* a copy is there */
	bool connected;  /* the thread holds a connection */
	bool stale;      /* past the lease (whatever directory_stale) */
	bool from_cache; /* the copy came from cache_file and no load has replaced it */
	int64_t version; /* of the copy */
	size_t rows, ignored, moving;
	size_t memory;   /* bytes of the copy */
	uint64_t age_ms; /* since the last contact (heartbeat accepted) */
	uint64_t loads, incrementals, failures;
	uint64_t last_load_ms, last_apply_us; /* how long the last full load / change took */
	size_t routers, mismatched; /* live routers seen, with another config fingerprint */
};
void dirsync_status(struct dirsync *ds, struct dirsync_status *st);

#endif /* TR_DIRSYNC_H */
