/*
 * client.h - a client session: accept -> startup -> route -> connect ->
 * auth relay -> splice -> close.
 */
#ifndef TR_CLIENT_H
#define TR_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

struct config;
struct router;

enum client_state {
	CLIENT_STARTUP,	   /* reading the startup packet (login timer) */
	CLIENT_TLS,	   /* reserved for the TLS handshake */
	CLIENT_ROUTING,	   /* tenant -> cluster -> writer (synchronous) */
	CLIENT_CONNECTING, /* TCP connect to the writer (connect timer), or waiting for a pooled
			      server connection (query_wait_timeout) */
	CLIENT_AUTH_RELAY, /* relaying authentication until ReadyForQuery */
	CLIENT_SPLICING,   /* bytes in, bytes out */
	CLIENT_CLOSING,	   /* flushing, then closing handles */
	/* Tenant source query: the router authenticates the client and answers it itself. */
	CLIENT_LOCAL_AUTH,    /* checking the client's password (login timer) */
	CLIENT_NO_TENANT,     /* logged in to the router; SETs answered here until the tenant */
	CLIENT_SERVER_LOGIN,  /* logging in to the chosen server for the client, replaying SETs,
				 or setting up a pooled connection for it */
	CLIENT_ADMIN,	      /* logged in to the admin console (database tenant_router) */
};

const char *client_state_name(enum client_state s);

/* Accepts one pending connection on listener and starts its session. */
void client_accept(struct router *rt, uv_stream_t *listener);

/*
 * Live sessions of a tenant (len bytes; tenant NULL: of every tenant) on
 * this loop, and sessions on its cluster (cluster may be NULL) that the
 * guard let switch to another tenant than their own (they may be working
 * for this one). With end_why, ends them (FATAL 57P01, end_why as the message):
 * a spliced one only when nothing is in flight (its last statement was
 * answered), unless force; it closes without a message when the splice is
 * not framed (guard = off). Returns the sessions still live. For the
 * directory's fence and move drain.
 */
size_t client_tenant_sessions(struct router *rt, const void *tenant, size_t len,
                              const char *cluster, const char *end_why, bool force);

/*
 * Live sessions of this loop whose tenant the ring of nc would place on
 * another cluster than the one they are on (tenants placed by a directory
 * row or a pin do not count). The first one is described in first (cap
 * bytes: tenant and clusters). For a reload, which is refused then.
 */
size_t client_ring_moves(struct router *rt, const struct config *nc, char *first, size_t cap);

/* Closes every session now (shutdown timeout or second signal). */
void client_close_all(struct router *rt);

/* Ends the sessions of rt's loop that the console marked (KILL), each with a FATAL. */
void client_kill_marked(struct router *rt);

#endif /* TR_CLIENT_H */
