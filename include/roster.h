/*
 * roster.h - every client session on every event loop, and the tenants
 * whose new sessions must wait (pure: a mutex, no event loop).
 *
 * Each session embeds a struct roster_entry and adds it at accept; the
 * admin console reads the roster (SHOW CLIENTS, SHOW TENANTS) and marks
 * sessions to kill from whatever loop it runs on. The roster never touches a
 * session: a kill sets a flag and calls the entry's wake function (a
 * uv_async_send of the session's loop), and that loop ends its own marked
 * sessions (roster_kill_reason()).
 *
 * Held tenants: a tenant is held while the console has paused it (PAUSE
 * TENANT) or while its pin is being changed (PIN/UNPIN: from the check that
 * it has no live session until every loop routes with the new pins). The
 * decision is one function, roster_tenant_held(), under the same lock as the
 * session count a pin change checks, so no session can slip between the
 * count and the change.
 *
 * All functions are safe from any thread. Locks are held for a copy or a
 * scan of the roster, never across a callback other than wake.
 */
#ifndef TR_ROSTER_H
#define TR_ROSTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define ROSTER_MAX_TENANT  255
#define ROSTER_MAX_CLUSTER 63
#define ROSTER_MAX_PEER    64
#define ROSTER_MAX_HOST    280
/* Held tenants at once (paused or moving); more PAUSEs are refused. */
#define ROSTER_MAX_HELD 1024

typedef void (*roster_wake_fn)(void *arg);

/* Why a session was marked to be killed. */
enum roster_kill { ROSTER_KILL_NONE, ROSTER_KILL_CLIENT, ROSTER_KILL_TENANT };

/* Why a tenant's new sessions wait. */
enum roster_hold { ROSTER_GO, ROSTER_PAUSED, ROSTER_MOVING };

/* Where a session's placement came from, for SHOW TENANTS. */
enum roster_source { ROSTER_SRC_NONE, ROSTER_SRC_PIN, ROSTER_SRC_RING, ROSTER_SRC_ROUTE };

struct roster_entry {
	struct roster_entry *prev, *next; /* under the roster lock */
	uint64_t id;
	unsigned loop; /* event loop index */
	roster_wake_fn wake;
	void *wake_arg;     /* borrowed */
	int64_t started_ms; /* wall clock, for the age */
	/* Under the roster lock (set by the session's own thread, read by the console). */
	char peer[ROSTER_MAX_PEER];
	char tenant[ROSTER_MAX_TENANT + 1];
	size_t tlen; /* 0: no tenant yet */
	char cluster[ROSTER_MAX_CLUSTER + 1];
	char host[ROSTER_MAX_HOST];
	enum roster_source source;
	bool waiting; /* held: not counted as live on a cluster */
	bool tls;
	bool admin; /* an admin console session (not counted per tenant) */
	/* Written by the session's thread alone, read anywhere (relaxed). */
	_Atomic(const char *) state; /* a static string: the state's name */
	atomic_uint_fast64_t bytes_in, bytes_out;
	atomic_int kill; /* enum roster_kill */
};

/* A session id unique in the process (every loop), from 1. */
uint64_t roster_next_id(void);
/* The wall clock in milliseconds (for started_ms). */
int64_t roster_now_ms(void);

/* Adds e (filled by the caller: id, loop, wake, started_ms, peer). */
void roster_add(struct roster_entry *e);
void roster_remove(struct roster_entry *e);

/* Bytes moved for a session, from its own thread (relaxed, no lock). */
static inline void roster_bytes(atomic_uint_fast64_t *ctr, size_t n)
{
	atomic_store_explicit(ctr, atomic_load_explicit(ctr, memory_order_relaxed) + n,
	                      memory_order_relaxed);
}

/*
 * THE check before a new session of a tenant connects anywhere: records
 * the tenant on e and says whether it must wait now, and why. cfg_gen is
 * the generation of the routing snapshot the session would route with: a
 * tenant whose pin changed in generation G is held for snapshots older
 * than G. While held, e does not count as a live session of the tenant.
 * (The tenant directory's moving state belongs here too.)
 */
enum roster_hold roster_tenant_held(struct roster_entry *e, const char *tenant, size_t len,
                                    uint64_t cfg_gen);

/* The session is routed: cluster, writer host:port and where the decision came from. */
void roster_set_route(struct roster_entry *e, const char *cluster, const char *host,
                      enum roster_source src);
void roster_set_tls(struct roster_entry *e, bool tls);

/* PAUSE TENANT: 0; -EALREADY if paused already; -ENOSPC past ROSTER_MAX_HELD; -EINVAL. */
int roster_pause(const char *tenant, size_t len) MUSTCHECK;
/* RESUME TENANT: 0, or -ENOENT if it was not paused. */
int roster_resume(const char *tenant, size_t len) MUSTCHECK;

/*
 * A pin change of tenant begins: from now on its new sessions wait. Returns
 * the number of live sessions of the tenant (not waiting ones) and keeps the
 * hold, or a negative errno: -EBUSY another change of it is in flight,
 * -ENOSPC, -EINVAL. With live sessions and no FORCE, the caller ends it
 * with roster_move_end(t, len, 0).
 */
int roster_move_begin(const char *tenant, size_t len) MUSTCHECK;
/*
 * The change is published as snapshot generation gen: sessions whose loop
 * routes with an older snapshot still wait; gen 0: the change was dropped,
 * the hold ends now.
 */
void roster_move_end(const char *tenant, size_t len, uint64_t gen);
/* Forgets finished moves every loop has caught up with (every snapshot >= min_gen). */
void roster_sweep(uint64_t min_gen);

/* Live sessions of a tenant (routed or routing, not waiting, not admin). */
size_t roster_tenant_sessions(const char *tenant, size_t len);

/*
 * KILL: marks the sessions and wakes their loops. Returns how many were
 * marked (a session marked already counts again; admin sessions are never
 * marked by tenant).
 */
size_t roster_kill_tenant(const char *tenant, size_t len);
bool roster_kill_client(uint64_t id);
/* What the session's loop reads when woken: enum roster_kill. */
static inline int roster_kill_reason(const struct roster_entry *e)
{
	return atomic_load_explicit(&e->kill, memory_order_relaxed);
}

/* A copy of one entry, for SHOW CLIENTS / SHOW TENANTS. */
struct roster_row {
	uint64_t id;
	unsigned loop;
	int64_t started_ms;
	char peer[ROSTER_MAX_PEER];
	char tenant[ROSTER_MAX_TENANT + 1];
	size_t tlen;
	char cluster[ROSTER_MAX_CLUSTER + 1];
	char host[ROSTER_MAX_HOST];
	enum roster_source source;
	bool waiting, tls, admin;
	const char *state; /* static, may be NULL */
	uint64_t bytes_in, bytes_out;
};
/*
 * Copies every entry, oldest first, into a new array (*out, caller frees).
 * Returns the count, or -ENOMEM.
 */
long roster_snapshot(struct roster_row **out) MUSTCHECK;

/* A held tenant, for SHOW TENANTS. */
struct roster_held_row {
	char tenant[ROSTER_MAX_TENANT + 1];
	size_t tlen;
	bool paused, moving;
};
/* Copies up to cap held tenants; returns how many there are in all. */
size_t roster_held_list(struct roster_held_row *out, size_t cap);

const char *roster_source_name(enum roster_source s);

#endif /* TR_ROSTER_H */
