/*
 * router.h - the running daemon's state, owned by main.c, shared with the
 * session code. One struct router per event loop.
 *
 * cfg is the current snapshot: a reload swaps it (and the health map) in one
 * step on the loop, so a session routing in a callback always sees a config
 * and a health map that belong together. Sessions copy what they keep
 * (tenant, cluster name, server address); they hold no snapshot reference.
 */
#ifndef TR_ROUTER_H
#define TR_ROUTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct cancel_map;
struct config;
struct health;
struct session;

struct router {
	uv_loop_t *loop;	   /* borrowed */
	struct config *cfg;	   /* owned reference: the current snapshot */
	struct health *health;	   /* owned */
	struct cancel_map *cancels; /* owned */
	struct session *sessions;  /* intrusive list of live sessions */
	size_t nsessions;	   /* on this loop */
	atomic_size_t *live;	   /* borrowed: sessions on all loops (max_client_conn) */
	atomic_size_t *held;	   /* borrowed: bytes the guard holds on all loops (guard_max_held) */
	uint64_t next_session_id;
	bool draining;		  /* SIGTERM: no new logins */
	void (*on_empty)(struct router *rt); /* called when draining and the last session ends */
};

#endif /* TR_ROUTER_H */
