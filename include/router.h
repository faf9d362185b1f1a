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

#include "log.h"

#define TR_VERSION "0.1.0"

struct cancel_map;
struct config;
struct dirsync;
struct health;
struct pool_set;
struct session;

/*
 * Admission, shared by all loops: the sessions being refused, and what the
 * open file limit allows. main.c computes the latter from RLIMIT_NOFILE at
 * start and at each reload (README, Operations, "File descriptors"); the
 * sessions read it at accept.
 */
struct limits {
	atomic_size_t refusing;	   /* sessions accepted over a limit, being refused */
	atomic_size_t nofile;	   /* the soft RLIMIT_NOFILE; 0: unknown, no fd budget */
	atomic_size_t fd_sessions; /* sessions that fit in it, two descriptors each */
	atomic_size_t wait_slots;  /* refused connections that may wait for their startup packet */
};

/*
 * A console command that only the main loop can carry out (RELOAD,
 * SHUTDOWN, PIN, UNPIN). The console fills the request part and calls
 * rt->admin_submit(); main.c runs it on the main loop and hands it back
 * on the requester's loop (from), where done is called once. A console
 * that goes away meanwhile sets cancelled (on its own loop): done is then
 * not called and the request is freed. The request is malloc'ed by the
 * console and freed by whoever calls done (done itself frees it).
 */
enum admin_req_kind { ADMIN_REQ_RELOAD, ADMIN_REQ_SHUTDOWN, ADMIN_REQ_PIN };

struct admin_req {
	struct admin_req *next; /* main.c's queues */
	enum admin_req_kind kind;
	struct router *from; /* borrowed: the requester's loop */
	/* PIN / UNPIN */
	char tenant[256];
	size_t tlen;
	char cluster[64]; /* "": UNPIN */
	bool force;
	/* The answer: ok, or an error with SQLSTATE, message and hint; notice may be set either way. */
	bool ok;
	char sqlstate[6];
	char message[512];
	char hint[320];
	char notice[512];
	bool cancelled;
	void (*done)(struct admin_req *r);
	void *arg; /* the console's */
};

struct router {
	uv_loop_t *loop;	   /* borrowed */
	struct config *cfg;	   /* owned reference: the current snapshot */
	struct health *health;	   /* owned */
	struct dirsync *dir;       /* borrowed: the tenant directory, NULL without one */
	struct cancel_map *cancels; /* owned */
	struct session *sessions;  /* intrusive list of live sessions */
	size_t nsessions;	   /* on this loop */
	atomic_size_t *live;	   /* borrowed: sessions on all loops (max_client_conn) */
	atomic_size_t *held;	   /* borrowed: bytes the guard holds on all loops (guard_max_held) */
	struct limits *limits;	   /* borrowed: shared by all loops */
	struct log_limit fd_log;   /* refusals for want of descriptors, on this loop */
	struct log_limit shed_log; /* refusals at once over max_client_conn, on this loop */
	uint64_t next_session_id;
	struct pool_set *pools;	  /* owned: pool_mode = session (NULL until first used) */
	unsigned index;		  /* this event loop's number; 0 is the main loop */
	uint64_t started_ns;	  /* uv_hrtime() at start, for uptimes */
	uv_async_t *admin_wake;	  /* borrowed: wakes this loop for kills and console answers */
	/* main.c: carries out r on the main loop, then answers on r->from's loop. */
	void (*admin_submit)(struct admin_req *r);
	bool draining;		  /* SIGTERM: no new logins */
	void (*on_empty)(struct router *rt); /* called when draining and the last session ends */
};

#endif /* TR_ROUTER_H */
