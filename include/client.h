/*
 * client.h - a client session: accept -> startup -> route -> connect ->
 * auth relay -> splice -> close.
 */
#ifndef TR_CLIENT_H
#define TR_CLIENT_H

#include <uv.h>

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

/* Closes every session now (shutdown timeout or second signal). */
void client_close_all(struct router *rt);

/* Ends the sessions of rt's loop that the console marked (KILL), each with a FATAL. */
void client_kill_marked(struct router *rt);

#endif /* TR_CLIENT_H */
