/*
 * session.h - the client module's private types and functions, shared by
 * its files (not part of include/: nothing else may use them). Calls go
 * one way, from the top down:
 *   client.c        a session's life: accept, startup packet, route,
 *                   connect, auth relay, close; the state machine
 *   client_local.c  tenant source query: the router's own login, local
 *                   answers until the tenant is known, the server login
 *   link.c          a client attached to its server: the splice
 *   client_guard.c  the stickiness guard on spliced sessions
 *   session.c       logging and refusals for all of them
 * Below them: server.c (the server connection) and conn.c (one side's
 * I/O). A file calls one above it only through a callback it was given:
 * s->up (client.c's struct session_ops), or the conn and server ops.
 */
#ifndef TR_SESSION_H
#define TR_SESSION_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "cancel.h"
#include "client.h"
#include "common.h"
#include "conn.h"
#include "console.h"
#include "gframe.h"
#include "health.h"
#include "log.h"
#include "pframe.h"
#include "pool.h"
#include "query.h"
#include "roster.h"
#include "server.h"
#include "splice.h"
#include "startup.h"
#include "stats.h"
#include "tls.h"

/* How long a closing session may take to flush what it owes its peer. */
#define CLOSE_FLUSH_MS 10000
/* What we forward must stay within the server's own startup packet limit. */
#define FORWARD_CAP PROTO_MAX_STARTUP_LEN
#define TLS_RECORD_TYPE_HANDSHAKE 0x16

/* A message before the tenant is known, and all we hold for the server then. */
#define LOCAL_MSG_MAX  (64u << 20)
#define LOCAL_HELD_MAX (256u << 20)

/* A growing byte buffer. */
struct gbuf {
	uint8_t *p;
	size_t len, cap;
};

enum local_phase { LP_SECRET, LP_SASL_FIRST, LP_SASL_FINAL, LP_MD5, LP_DONE };

/* Parses one extended-protocol batch before the tenant may hold (more: the batch fails). */
#define BATCH_STMTS_MAX 4096

/* What we learnt about one Parse of an extended-protocol batch. */
struct xstmt {
	char name[64];
	struct query_tenant q;
	bool empty;
	size_t off, total; /* the Parse message: held.p + off (offsets: held moves as it grows) */
	size_t sqloff;	   /* its SQL text: held.p + sqloff */
	size_t sqllen;
	uint16_t ntypes;
	uint32_t types[8];
};

/*
 * The extended-protocol batch held before the tenant is known (its messages
 * since the last Sync are in local.held). A Flush answers what it can, so
 * the batch is looked at in steps: what has been read, what answered.
 */
struct xbatch {
	struct xstmt *v; /* owned: one per Parse of the batch, in order */
	size_t nv, cap;
	size_t scanned;	    /* held bytes looked at for the tenant */
	size_t done;	    /* held bytes answered already (at a Flush) */
	size_t parsed;	    /* Parses answered already: v[parsed] is the next one */
	size_t cur;	    /* 1 + v index of the statement of the last Bind answered; 0: none */
	bool found, conflict, notlocal;
	struct query_tenant bad; /* why the batch cannot be answered, when it cannot */
	char tenant[STARTUP_MAX_TENANT_LEN + 1];
	size_t tlen;
	size_t replay_mark; /* replay.len (and nreplay) where the batch's implicit transaction */
	unsigned nreplay_mark; /* began: its SETs go if it fails */
};

/* The router's own side of a login for tenant source query (see local_start). */
struct local {
	enum local_phase phase;
	char user[AUTH_MAX_USER];
	char database[64];
	struct secret secret; /* from auth_file or auth_query; SECRET_NONE: unknown user */
	struct scram_server ss;
	struct scram_client sc;
	bool have_keys; /* ss.client_key came from a valid proof: reusable towards the server */
	uint8_t salt[4];
	struct health_auth *aq; /* auth_query in flight */
	struct gbuf cin;	/* client bytes not handled yet */
	size_t cin_off;
	struct gbuf held;   /* client messages for the server, in order */
	struct xbatch batch; /* the extended-protocol batch in held */
	size_t qoff, qlen;   /* in held: the routing Query, judged whole already (it may be
				longer than the guard reads) */
	struct gbuf replay; /* statements answered here, to run on the server first */
	unsigned nreplay, replay_left;
	bool server_ready; /* the server's first ReadyForQuery came */
	char txn;	   /* transaction status we report: 'I', 'T' or 'E' */
	uint32_t pid;	   /* the BackendKeyData we gave the client */
	uint8_t key[4];
	char replay_err[400];
	/* pool_mode = session: the tenant came in the startup packet, the server from a pool. */
	bool pooled;
	struct tenant tenant;
};

struct login {
	uint8_t *in; /* owned: client bytes until the packet is whole (grows to the limit) */
	size_t inlen, incap;
	bool overflow;
	uint8_t nego; /* SSLRequest/GSSENCRequest answered */
	const uint8_t *pkt; /* the packet to forward: in or fwd */
	size_t pktlen;
	size_t extra_off; /* in[extra_off, inlen): bytes the client sent after it */
	uint8_t *fwd; /* owned: the rewritten packet, only when we rewrite it */
	struct health_target target;
	bool pinned;
	bool by_directory;    /* placed by a tenant directory row */
	uv_getaddrinfo_t gai; /* a host route's name being resolved */
	bool resolving;
	bool direct_tls; /* the client began with a TLS ClientHello (PostgreSQL 17+) */
	SSL_CTX *sv_ctx; /* owned reference: TLS towards the server, NULL for plaintext */
	enum tls_server_mode sv_mode;
	struct local *lc; /* owned: for tenant source query, pool_mode = session and the admin
			     console */
	bool pool_slot;	  /* a pool granted a slot (s->preq.pool) not filled yet */
	char pool_state[6]; /* why that slot's login failed, for server_login_retry */
	char pool_err[400];
	/* Held before connecting: the tenant is paused or its pin is changing (tenant_held). */
	bool holding;
	uint64_t hold_since; /* uv_now() when it began to wait */
	struct tenant hold_t;
	size_t hold_len; /* the startup packet's length, to parse it again */
};

/* How often a held session looks again whether its tenant may go on. */
#define HOLD_RECHECK_MS 100

/* The stickiness guard (client_guard.c); on only when guard != off. */
#define GUARD_SQLSTATE "42501"
struct flagged;
struct guard {
	bool on, strict;
	struct gframe f;		/* framing of both directions */
	struct gframe_error *refusal;	/* owned: built while judging a message */
	struct flagged *flagged;	/* owned: statements that set the tenant from a parameter */
	unsigned nflagged;
	bool oom, send_failed;		/* why the framer stopped */
	/* Bytes of the block being framed that passed and wait to go, as one range. */
	const uint8_t *base, *pstart, *pend; /* borrowed: into the block */
	size_t blen;
	bool copied; /* something went out as a copy: the block cannot be passed whole */
	/* A switch to a tenant other than s->tenant was allowed: the directory's fence counts
	 * (and its drain ends) this session for every moving tenant of its cluster. */
	bool switched;
	/* The directory's drain wants the session ended: at its next statement, before it goes. */
	bool end_at_idle;
};

/* Why a session was accepted only to be refused with 53300. */
enum over_limit { OVER_NONE, OVER_CONN, OVER_FDS };

/* How long a connection refused for a limit may take to send its startup packet. */
#define OVER_LIMIT_GRACE_MS 1000

struct session;

/*
 * What the client's state machine (client.c) does for the files below it.
 * They call up only through this table (s->up), never by name; client.c
 * gives it to every session at accept.
 */
struct session_ops {
	/* Every state change goes through here; it asserts the transition is allowed. */
	void (*set_state)(struct session *s, enum client_state next);
	/* Closes every handle now (pending writes are cancelled); frees in the last close callback. */
	void (*close)(struct session *s);
	/* Stops reading, lets what is queued for dst reach it, then closes (bounded). */
	void (*drain)(struct session *s, struct conn *dst);
	/* FATAL ErrorResponse (msg: the text after "tenant-router: ", with a hint), then close. */
	void (*refuse)(struct session *s, const char *sqlstate, const char *hint, const char *msg);
	/* The tenant is known: its cluster's writer, and a connection to it (len: startup packet). */
	void (*connect_tenant)(struct session *s, const struct startup *st, const struct tenant *t,
			       size_t len);
	/* The router's login on a pooled connection is over: splice (frees s->login). */
	void (*login_done)(struct session *s);
	/* The client of a pooled connection sent Terminate: give the connection back, close. */
	void (*logout)(struct session *s);
};

struct session {
	struct router *rt; /* borrowed */
	const struct session_ops *up; /* borrowed: client.c's */
	struct session *prev, *next;
	uint64_t id;
	enum client_state state;
	struct conn cl;	   /* the client's connection */
	struct server *sv; /* owned until server_close: the server connection, or NULL */
	uv_timer_t timer;
	int open_handles;
	bool closed; /* handles are closing */
	uint8_t over_limit; /* enum over_limit: accepted only to be refused */
	bool refuse_now;    /* no descriptor to spare: client_refuse writes at once and closes */
	uint64_t login_deadline;
	uint64_t started;
	struct login *login; /* owned; NULL once spliced */
	char *tenant;	     /* owned */
	char cluster[64];    /* for a host route: "route:NAME" (no cluster has a ':') */
	char route[64];	     /* the [route.NAME] that routed the session, or "": no tenant */
	char peer[INET6_ADDRSTRLEN + 8];
	struct cancel_entry ce;
	struct guard g;
	struct stats_cluster *stc; /* borrowed, lives until exit: counters of s->cluster once routed */
	bool pooled;		   /* on a pooled server connection: pf frames both ways */
	struct pframe pf;
	struct pool_req preq; /* waiting for a pooled connection */
	uint64_t t0_ns;		   /* uv_hrtime() at accept, for the login latency */
	struct roster_entry ro;	   /* in the roster of every loop's sessions (SHOW CLIENTS, KILL) */
	bool admin;		   /* asked for the admin console (database tenant_router) */
	struct console *con;	   /* owned: the console, once logged in to it */
};

/* session.c: what every file of the module uses (the bottom: calls up only through s->up). */
void session_log(struct session *s, enum log_level level, const char *fmt, ...) PRINTF_LIKE(3, 4);
void session_refuse(struct session *s, const char *sqlstate, const char *hint, const char *fmt,
		    ...) PRINTF_LIKE(4, 5);
/* The server's conn, or NULL when there is no server connection. */
struct conn *session_server_conn(struct session *s);
/* The text of the tenant parameter of a Bind body (st->q.param, typed by st->types). */
bool session_bind_param(const uint8_t *body, size_t len, const struct xstmt *st, char *out,
			size_t cap, size_t *outlen);

/* client_local.c: tenant source query, and the admin console's login. */
/* No tenant in the startup packet (len bytes, in s->login->in): authenticate the client. */
void local_start(struct session *s, const struct startup *st, size_t len);
/* pool_mode = session: authenticate the client, then connect_tenant(t) for a pooled server. */
void local_start_pooled(struct session *s, const struct startup *st, size_t len,
			const struct tenant *t);
/* A pooled connection now attached to s (s->sv): set it up for the client, then login_done. */
void local_pooled_attach(struct session *s);
/* Client bytes while the router answers the client itself (takes b). */
void local_in(struct session *s, struct block *b, size_t n);
/* One server message while the router logs in for the client and replays; false closes. */
bool local_server_message(struct session *s, uint8_t type, const uint8_t *body, size_t len);
void local_free(struct local *lc);
/* Appends n bytes to g; false when out of memory or past LOCAL_HELD_MAX. */
bool client_gbuf_add(struct gbuf *g, const void *p, size_t n);

/* client_guard.c: the stickiness guard (s->g.on). */
/* Sets s->g up from the current config (at accept: framing starts with the first message). */
void guard_init(struct session *s);
/* Client bytes for the server / server bytes for the client (take b). They may close s. */
void guard_client(struct session *s, struct block *b, size_t n);
void guard_server(struct session *s, struct block *b, size_t n);
/* The same for bytes not in a block: pipelined behind the startup packet, or server bytes
 * after the login's ReadyForQuery (these go into the login's gathered output). */
void guard_client_bytes(struct session *s, const uint8_t *p, size_t n);
void guard_server_bytes(struct session *s, const uint8_t *p, size_t n);
/* Client bytes that went to the server around the guard: keeps the framing. */
void guard_sent(struct session *s, const uint8_t *p, size_t n);
void guard_free(struct guard *g);

/* link.c: a client attached to its server, bytes in, bytes out. */
/* Attaches s->cl and s->sv to each other for back-pressure. */
void link_attach(struct session *s);
/* Detaches them (before the server connection goes). */
void link_detach(struct session *s);
/* Client bytes for the server / server bytes for the client while splicing (take b). */
void link_client_data(struct session *s, struct block *b, size_t n);
/* Client bytes not in a block (held at the router during a pooled login). */
void link_client_bytes(struct session *s, const uint8_t *p, size_t n);
void link_server_data(struct session *s, struct block *b, size_t n);
/* A write to dst completed under the low-water mark: read its source again. */
void link_writable(struct session *s, struct conn *dst);
/*
 * Whether the server's stream to the client is between messages, so one
 * of ours (a FATAL) can go in: only the guard frames it, so false with the
 * guard off or when the framing is lost.
 */
bool link_server_at_boundary(const struct session *s);

#endif /* TR_SESSION_H */
