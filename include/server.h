/*
 * server.h - a connection to a coordinator: connect, SSLRequest and TLS,
 * then the login's messages framed whole (the auth relay, or the router's
 * own login), ParameterStatus and BackendKeyData kept, ReadyForQuery.
 *
 * A server connection is its own allocation and needs no client: the
 * pool keeps idle ones. It reports to whoever owns it at the moment
 * through the struct server_ops it was given (server_new, server_adopt),
 * never by name. Closing (server_close) detaches the owner at once: no
 * callback reaches it afterwards, and the memory goes in the handle's
 * close callback.
 */
#ifndef TR_SERVER_H
#define TR_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"
#include "conn.h"
#include "health.h"
#include "proto.h"
#include "tls.h"

struct pool;

/* Server messages during login are small; anything near this is broken. */
#define SERVER_LOGIN_MSG_MAX (1u << 20)
/* ParameterStatus kept for a pooled connection (PostgreSQL reports about 15). */
#define SERVER_PARAMS_MAX 4096

/* Where the connection is while connecting. */
enum server_phase { SV_TCP, SV_SSL_ANSWER, SV_TLS_HANDSHAKE, SV_LOGIN };

struct server;

struct server_ops {
	/* TCP is up, and TLS if asked for: send the startup packet. */
	void (*on_connected)(struct server *sv);
	/* Connecting failed; msg is the text after "tenant-router: ". */
	void (*on_fail)(struct server *sv, const char *sqlstate, const char *hint, const char *msg);
	/* Bytes from the server (past the SSLRequest answer). Takes b. */
	void (*on_data)(struct server *sv, struct block *b, size_t n);
	/* One whole message during login (server_login_bytes); false: stop framing. */
	bool (*on_login_msg)(struct server *sv, uint8_t type, const uint8_t *body, size_t len);
	/* Bytes after the login's end (sv->ready), in the same read. */
	void (*on_login_rest)(struct server *sv, const uint8_t *p, size_t n);
	/* The rest mirror struct conn_ops for the server's conn. */
	void (*on_end)(struct server *sv, int err);
	void (*on_send_failed)(struct server *sv, int rc);
	void (*on_writable)(struct server *sv);
	void (*on_shutdown)(struct server *sv);
	void (*on_fatal)(struct server *sv, int err);
};

struct server {
	struct conn c;
	const struct server_ops *ops; /* borrowed; NULL once detached */
	void *owner;                  /* borrowed */
	struct server *prev, *next;   /* the pool's lists */
	char cluster[64];
	struct health_target target;
	SSL_CTX *ctx; /* owned reference: TLS towards the server, NULL for plaintext */
	enum tls_server_mode mode;
	enum server_phase phase;
	uv_connect_t connect;
	/* Framer over server messages during login. */
	uint8_t hdr[5];
	size_t hlen;
	size_t mlen;  /* body length of the current message */
	size_t blen;  /* body bytes received so far */
	uint8_t *msg; /* owned: the current message's body */
	size_t msgcap;
	bool relay;      /* the client's own login passes through: strip SCRAM-SHA-256-PLUS */
	bool got_ready;  /* the first ReadyForQuery came: any message type may follow */
	bool ready;      /* the login is over (set by the owner, or at 'Z' when relaying) */
	bool server_err; /* the server sent an ErrorResponse during login */
	/* Framer over the client's SASLInitialResponse (see server_check_sasl). */
	bool sasl_pending; /* the server asked for SASL; its first 'p' is still to come */
	uint8_t cmsg[96];
	size_t clen;
	/* What the login told us, for a pooled connection's next clients. */
	uint32_t pid;
	uint8_t key[PROTO_MAX_CANCEL_KEY];
	size_t keylen;
	uint8_t *params; /* owned: the ParameterStatus messages, framed */
	size_t paramslen;
	/* The pool's bookkeeping (pool.c). */
	struct pool *pool;   /* borrowed: the pool this connection belongs to, or NULL */
	uint8_t pstate;      /* pool.c's: busy, resetting or idle */
	uint8_t resets_left; /* ReadyForQuery still to come for the reset's queries */
	uint64_t born_ms;    /* uv_now at connect */
	uint64_t since_ms;   /* uv_now when it went idle, or began its reset */
	bool dirty;          /* its state is not known to be clean: never reused */
};

/*
 * A new, unconnected server connection to target (ctx: a reference the
 * connection takes; NULL for plaintext). NULL and *rc on failure (ctx is
 * then released).
 */
struct server *server_new(uv_loop_t *loop, const struct server_ops *ops, void *owner,
                          const char *cluster, const struct health_target *target, SSL_CTX *ctx,
                          enum tls_server_mode mode, int *rc) MUSTCHECK;
/* Starts the TCP connect; on_connected or on_fail follows. 0 or a libuv error. */
int server_connect(struct server *sv) MUSTCHECK;
/* Gives sv to a new owner (the pool, or a client taking it from the pool). */
void server_adopt(struct server *sv, const struct server_ops *ops, void *owner);
/*
 * Frames server bytes during login and passes each whole message to
 * on_login_msg; bytes after the end of the login go to on_login_rest. A
 * message is passed only once its last byte has come. False when the
 * server broke the protocol, with what it did in why.
 */
bool server_login_bytes(struct server *sv, const uint8_t *p, size_t n, char *why, size_t cap);
/*
 * The client's SASLInitialResponse on a relayed login with both legs on
 * TLS: false when it cannot pass (on_fail has said why).
 */
bool server_check_sasl(struct server *sv, const uint8_t *p, size_t n);
/* Sends one message (type, body) to the server. 0 or a libuv error. */
int server_send_msg(struct server *sv, uint8_t type, const void *body, size_t len) MUSTCHECK;
/* Keeps a ParameterStatus body (name, value) as the connection's current value. */
void server_keep_param(struct server *sv, const uint8_t *body, size_t len);
/* The kept value of parameter name, or NULL. */
const char *server_param(const struct server *sv, const char *name);
/* Closes now and detaches the owner; the memory goes in the close callback. */
void server_close(struct server *sv);

#endif /* TR_SERVER_H */
