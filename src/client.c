/*
 * client.c - one client session, from accept to close.
 *
 * A session is one allocation with its libuv handles embedded (client and
 * server TCP, one timer); it is freed only in the last close callback.
 * Its life is the enum client_state in client.h, changed only through
 * set_state(). Every waiting state is bounded by the one timer: the login
 * timeout from accept until ReadyForQuery, the connect timeout while
 * connecting, a flush limit while closing.
 *
 * Until ReadyForQuery we keep a struct login on the side (the startup
 * packet, the chosen server, a framer over the server's messages); once the
 * session splices it is freed, so an idle session holds no buffer.
 *
 * While relaying authentication we pass the server's messages on whole:
 * BackendKeyData goes to the cancel map, an ErrorResponse is logged,
 * SCRAM-SHA-256-PLUS is removed from AuthenticationSASL (channel binding
 * cannot work through a router that terminates TLS), and ReadyForQuery ends
 * the login. After that, bytes in, bytes out.
 *
 * Either leg may be TLS (struct tls over memory BIOs). All bytes from a leg
 * go through read_cb -> tls_in -> deliver, and all bytes to a leg through
 * side_send, so the state machine does not care which legs are encrypted.
 *
 * What we never do: send a tenant to a second cluster. A session's cluster
 * is chosen once, before connecting, and nothing afterwards re-routes it.
 */
#include "client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "cancel.h"
#include "config.h"
#include "health.h"
#include "log.h"
#include "proto.h"
#include "query.h"
#include "route.h"
#include "router.h"
#include "splice.h"
#include "startup.h"
#include "tls.h"

/* How long a closing session may take to flush what it owes its peer. */
#define CLOSE_FLUSH_MS 10000
/* What we forward must stay within the server's own startup packet limit. */
#define FORWARD_CAP PROTO_MAX_STARTUP_LEN
/* Server messages during login are small; anything near this is broken. */
#define AUTH_MSG_MAX (1u << 20)
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
	struct gbuf replay; /* statements answered here, to run on the server first */
	unsigned nreplay, replay_left;
	bool server_ready; /* the server's first ReadyForQuery came */
	char txn;	   /* transaction status we report: 'I', 'T' or 'E' */
	uint32_t pid;	   /* the BackendKeyData we gave the client */
	uint8_t key[4];
	char replay_err[400];
};

/* Where the server leg is while connecting. */
enum sv_phase { SV_TCP, SV_SSL_ANSWER, SV_TLS_HANDSHAKE };

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
	bool direct_tls; /* the client began with a TLS ClientHello (PostgreSQL 17+) */
	uv_connect_t connect;
	SSL_CTX *sv_ctx; /* owned reference: TLS towards the server, NULL for plaintext */
	enum tls_server_mode sv_mode;
	enum sv_phase sv_phase;
	/* Framer over server messages during the auth relay. */
	uint8_t hdr[5];
	size_t hlen;
	size_t mlen;  /* body length of the current message */
	size_t blen;  /* body bytes received so far */
	uint8_t *msg; /* owned: the current message's body */
	size_t msgcap;
	bool ready;	    /* ReadyForQuery seen */
	struct block *out; /* owned: server messages gathered for one write to the client */
	size_t outlen;
	/* Framer over the client's SASLInitialResponse (see check_sasl_initial). */
	bool sasl_pending; /* the server asked for SASL; its first 'p' is still to come */
	uint8_t cmsg[96];
	size_t clen;
	struct local *lc; /* owned: only for tenant source query */
};

/* The stickiness guard's framing state (see guard_client); on only when guard != off. */
#define GUARD_SQLSTATE "42501"
struct refusal;
struct flagged;
struct guard {
	bool on, strict;
	bool discard;	 /* dropping a refused batch up to its Sync */
	bool err;	 /* the server sent an ErrorResponse since its last ReadyForQuery */
	bool cforwarded; /* the client header in chdr went out before we framed */
	uint8_t chlen, shlen, sheld;
	uint8_t chdr[5], shdr[5];
	uint32_t cleft, sleft; /* body bytes of the current message still to come */
	uint64_t syncs, zs;    /* Query/Sync/FunctionCall sent, ReadyForQuery received */
	struct gbuf hold;      /* a Query/Parse/Bind longer than one read */
	struct refusal *refusals;
	struct flagged *flagged;
};

struct side {
	uv_tcp_t tcp;
	bool inited;
	bool reading;
	bool paused;	 /* reading stopped by back-pressure */
	struct tls *tls; /* owned; NULL for plaintext */
	bool tls_ready;	 /* handshake complete */
};

struct session {
	struct router *rt; /* borrowed */
	struct session *prev, *next;
	uint64_t id;
	enum client_state state;
	struct side cl, sv;
	uv_timer_t timer;
	uv_shutdown_t shut;
	int open_handles;
	bool closed; /* handles are closing */
	bool over_limit;
	uint64_t login_deadline;
	uint64_t started;
	struct login *login; /* owned; NULL once spliced */
	char *tenant;	     /* owned */
	char cluster[64];
	char peer[INET6_ADDRSTRLEN + 8];
	struct cancel_entry ce;
	struct guard g;
};

static const char *const state_names[] = {"startup",	  "tls",	"routing",
					  "connecting",	  "auth_relay", "splicing",
					  "closing",	  "local_auth", "no_tenant",
					  "server_login"};

const char *client_state_name(enum client_state s)
{
	return (size_t)s < ARRAY_SIZE(state_names) ? state_names[s] : "?";
}

static void slog(struct session *s, enum log_level level, const char *fmt, ...) PRINTF_LIKE(3, 4);

static void slog(struct session *s, enum log_level level, const char *fmt, ...)
{
	char prefix[512];
	va_list ap;

	if (!log_enabled(level))
		return;
	snprintf(prefix, sizeof(prefix), "c=%llu peer=%s tenant=%s cluster=%s",
		 (unsigned long long)s->id, s->peer, s->tenant ? s->tenant : "-",
		 s->cluster[0] ? s->cluster : "-");
	va_start(ap, fmt);
	log_vmsg(level, prefix, fmt, ap);
	va_end(ap);
}

static void set_state(struct session *s, enum client_state next)
{
	static const unsigned allowed[] = {
		[CLIENT_STARTUP] = 1u << CLIENT_TLS | 1u << CLIENT_ROUTING | 1u << CLIENT_CLOSING,
		[CLIENT_TLS] = 1u << CLIENT_STARTUP | 1u << CLIENT_CLOSING,
		[CLIENT_ROUTING] = 1u << CLIENT_CONNECTING | 1u << CLIENT_LOCAL_AUTH |
				   1u << CLIENT_CLOSING,
		[CLIENT_CONNECTING] = 1u << CLIENT_AUTH_RELAY | 1u << CLIENT_SERVER_LOGIN |
				      1u << CLIENT_CLOSING,
		[CLIENT_AUTH_RELAY] = 1u << CLIENT_SPLICING | 1u << CLIENT_CLOSING,
		[CLIENT_SPLICING] = 1u << CLIENT_CLOSING,
		[CLIENT_CLOSING] = 0,
		[CLIENT_LOCAL_AUTH] = 1u << CLIENT_NO_TENANT | 1u << CLIENT_CLOSING,
		[CLIENT_NO_TENANT] = 1u << CLIENT_ROUTING | 1u << CLIENT_CLOSING,
		[CLIENT_SERVER_LOGIN] = 1u << CLIENT_SPLICING | 1u << CLIENT_CLOSING,
	};

	if (s->state == next)
		return;
	TR_ASSERT(allowed[s->state] & (1u << next));
	if (log_enabled(LOG_TRACE))
		slog(s, LOG_TRACE, "state %s -> %s", client_state_name(s->state),
		     client_state_name(next));
	s->state = next;
}

static void local_free(struct local *lc);
static void guard_free(struct guard *g);
static void guard_sent(struct session *s, const uint8_t *p, size_t n);
static void guard_scan_server(struct session *s, const uint8_t *p, size_t n);
static bool server_login_message(struct session *s, uint8_t type, const uint8_t *body,
				 size_t len);

static void login_free(struct login *L)
{
	if (L == NULL)
		return;
	local_free(L->lc);
	if (L->sv_ctx)
		tls_ctx_free(L->sv_ctx);
	if (L->out)
		block_put(L->out);
	free(L->in);
	free(L->fwd);
	free(L->msg);
	free(L);
}

static void session_free(struct session *s)
{
	struct router *rt = s->rt;

	if (s->prev)
		s->prev->next = s->next;
	else
		rt->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	rt->nsessions--;
	atomic_fetch_sub(rt->live, 1);
	login_free(s->login);
	guard_free(&s->g);
	tls_free(s->cl.tls);
	tls_free(s->sv.tls);
	free(s->tenant);
	free(s);
	if (rt->draining && rt->nsessions == 0 && rt->on_empty)
		rt->on_empty(rt);
}

static void close_cb(uv_handle_t *h)
{
	struct session *s = h->data;

	if (--s->open_handles == 0)
		session_free(s);
}

/* Closes every handle now; pending writes are cancelled. */
static void session_close(struct session *s)
{
	if (s->closed)
		return;
	if (s->state != CLIENT_CLOSING)
		set_state(s, CLIENT_CLOSING);
	s->closed = true;
	cancel_unregister(s->rt->cancels, &s->ce);
	slog(s, LOG_DEBUG, "closed age=%llums",
	     (unsigned long long)(uv_now(s->rt->loop) - s->started));
	uv_close((uv_handle_t *)&s->timer, close_cb);
	uv_close((uv_handle_t *)&s->cl.tcp, close_cb);
	if (s->sv.inited)
		uv_close((uv_handle_t *)&s->sv.tcp, close_cb);
}

static void timer_cb(uv_timer_t *t);

static void arm_timer(struct session *s, uint64_t ms)
{
	uv_timer_start(&s->timer, timer_cb, ms, 0);
}

static uint64_t login_left(struct session *s)
{
	uint64_t now = uv_now(s->rt->loop);

	return s->login_deadline > now ? s->login_deadline - now : 0;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	session_close(req->data);
}

static void stop_reading(struct side *sd)
{
	if (sd->inited && sd->reading && !uv_is_closing((uv_handle_t *)&sd->tcp)) {
		uv_read_stop((uv_stream_t *)&sd->tcp);
		sd->reading = false;
	}
}

/*
 * Stops reading both sides, lets what is queued for dst reach it, then
 * closes everything (bounded by CLOSE_FLUSH_MS).
 */
static void begin_drain(struct session *s, struct side *dst)
{
	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	set_state(s, CLIENT_CLOSING);
	stop_reading(&s->cl);
	stop_reading(&s->sv);
	arm_timer(s, CLOSE_FLUSH_MS);
	s->shut.data = s;
	if (!dst->inited || uv_shutdown(&s->shut, (uv_stream_t *)&dst->tcp, shutdown_cb) < 0)
		session_close(s);
}

static struct side *other(struct session *s, struct side *sd)
{
	return sd == &s->cl ? &s->sv : &s->cl;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void start_reading(struct session *s, struct side *sd);
static void send_failed(struct session *s, struct side *dst, int rc);

static void write_cb(uv_write_t *req, int status)
{
	struct session *s = req->data;
	struct side *dst = req->handle == (uv_stream_t *)&s->cl.tcp ? &s->cl : &s->sv;
	struct side *src = other(s, dst);

	block_put(container_of(req, struct block, req));
	if (status == UV_ECANCELED || s->closed)
		return;
	if (status < 0) {
		send_failed(s, dst, status);
		return;
	}
	if (src->paused && (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SPLICING) &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&dst->tcp) < SPLICE_LOW_WATER) {
		src->paused = false;
		start_reading(s, src);
	}
}

/* Moves the ciphertext TLS produced for sd onto its socket. */
static int flush_tls(struct session *s, struct side *sd)
{
	for (;;) {
		struct block *b = block_get();
		size_t n;
		int rc;

		if (b == NULL)
			return UV_ENOMEM;
		n = tls_take_out(sd->tls, b->data, SPLICE_BLOCK_SIZE);
		if (n == 0) {
			block_put(b);
			return 0;
		}
		rc = splice_send((uv_stream_t *)&sd->tcp, b, 0, n, s, write_cb);
		if (rc < 0)
			return rc;
	}
}

/* Sends n bytes of b to sd (encrypting on a TLS leg); takes b. */
static int side_send(struct session *s, struct side *sd, struct block *b, size_t n)
{
	bool ok;

	if (sd->tls == NULL)
		return splice_send((uv_stream_t *)&sd->tcp, b, 0, n, s, write_cb);
	ok = tls_write(sd->tls, b->data, n);
	block_put(b);
	return ok ? flush_tls(s, sd) : UV_EPROTO;
}

static int side_send_copy(struct session *s, struct side *sd, const void *p, size_t n)
{
	if (sd->tls == NULL)
		return splice_send_copy((uv_stream_t *)&sd->tcp, p, n, s, write_cb);
	return tls_write(sd->tls, p, n) ? flush_tls(s, sd) : UV_EPROTO;
}

/* After queueing for dst: pause its source while dst has too much unsent. */
static void apply_pressure(struct session *s, struct side *dst)
{
	struct side *src = other(s, dst);

	if (uv_stream_get_write_queue_size((uv_stream_t *)&dst->tcp) > SPLICE_HIGH_WATER &&
	    !src->paused && src->reading) {
		src->paused = true;
		stop_reading(src);
	}
}

static void send_failed(struct session *s, struct side *dst, int rc)
{
	slog(s, LOG_DEBUG, "write to %s failed: %s", dst == &s->cl ? "client" : "server",
	     uv_strerror(rc));
	/* The server is gone: still hand the client what it already sent. */
	if (dst == &s->sv)
		begin_drain(s, &s->cl);
	else
		session_close(s);
}

/* Passes b (n bytes) to dst, pausing the source if dst has too much unsent. */
static void forward(struct session *s, struct side *dst, struct block *b, size_t n)
{
	int rc = side_send(s, dst, b, n);

	if (rc < 0)
		send_failed(s, dst, rc);
	else
		apply_pressure(s, dst);
}

/*
 * True when an ErrorResponse can reach the client as a whole message: before
 * splicing we only ever send it whole messages, but mid-handshake there is
 * no channel to send one on.
 */
static bool client_at_boundary(struct session *s)
{
	if (s->cl.tls && !s->cl.tls_ready)
		return false;
	return s->state == CLIENT_STARTUP || s->state == CLIENT_TLS ||
	       s->state == CLIENT_ROUTING || s->state == CLIENT_CONNECTING ||
	       s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_LOCAL_AUTH ||
	       s->state == CLIENT_NO_TENANT || s->state == CLIENT_SERVER_LOGIN;
}

/*
 * The one way to refuse a client: a FATAL ErrorResponse naming the router,
 * with a hint, then close once it is flushed.
 */
static void client_refuse(struct session *s, const char *sqlstate, const char *hint,
			  const char *fmt, ...) PRINTF_LIKE(4, 5);
static bool out_flush(struct session *s);

static void client_refuse(struct session *s, const char *sqlstate, const char *hint,
			  const char *fmt, ...)
{
	char msg[768];
	struct block *b;
	struct wbuf w;
	va_list ap;
	int n;

	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	n = snprintf(msg, sizeof(msg), "tenant-router: ");
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	slog(s, LOG_INFO, "refused sqlstate=%s reason=\"%s\"", sqlstate, msg + n);
	if (!client_at_boundary(s)) {
		session_close(s);
		return;
	}
	/* Messages we gathered for the client go before the error. */
	if (s->login && s->login->out && !out_flush(s))
		return;
	if (s->sv.inited && !uv_is_closing((uv_handle_t *)&s->sv.tcp))
		uv_close((uv_handle_t *)&s->sv.tcp, close_cb);
	s->sv.inited = false;
	s->sv.reading = false;
	b = block_get();
	if (b == NULL) {
		session_close(s);
		return;
	}
	wb_init(&w, b->data, SPLICE_BLOCK_SIZE);
	proto_error_response(&w, "FATAL", sqlstate, msg, NULL, hint);
	TR_ASSERT(!w.failed);
	if (side_send(s, &s->cl, b, w.len) < 0) {
		session_close(s);
		return;
	}
	begin_drain(s, &s->cl);
}

static void timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	const struct config *cfg = s->rt->cfg;

	switch (s->state) {
	case CLIENT_STARTUP:
	case CLIENT_TLS:
	case CLIENT_ROUTING:
		client_refuse(s, "08006", "Send a startup packet promptly after connecting.",
			      "login timeout: no complete startup packet within %llu ms",
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_CONNECTING:
		if (login_left(s) == 0)
			client_refuse(s, "08006", "Retry; if it persists, check the cluster.",
				      "login timeout while connecting to cluster \"%s\"",
				      s->cluster);
		else
			client_refuse(s, "08006",
				      "The coordinator did not answer in time; retry, or check "
				      "the cluster and the network.",
				      "could not connect to cluster \"%s\" coordinator %s:%u: "
				      "timed out",
				      s->cluster, s->login->target.host, s->login->target.port);
		break;
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		client_refuse(s, "08006", "Complete authentication within client_login_timeout.",
			      "login to cluster \"%s\" did not complete within %llu ms", s->cluster,
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_LOCAL_AUTH:
		client_refuse(s, "08006", "Complete authentication within client_login_timeout.",
			      "login did not complete within %llu ms",
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_SPLICING:
	case CLIENT_NO_TENANT:
		break;
	case CLIENT_CLOSING:
		session_close(s);
		break;
	}
}

/* Sends what out_put() gathered to the client; false if the session is closing. */
static bool out_flush(struct session *s)
{
	struct login *L = s->login;
	struct block *b = L->out;
	int rc;

	L->out = NULL;
	if (b == NULL)
		return true;
	if (L->outlen == 0 || s->closed || s->state == CLIENT_CLOSING) {
		block_put(b);
		return !s->closed && s->state != CLIENT_CLOSING;
	}
	rc = side_send(s, &s->cl, b, L->outlen);
	L->outlen = 0;
	if (rc < 0) {
		send_failed(s, &s->cl, rc);
		return false;
	}
	apply_pressure(s, &s->cl);
	return true;
}

/*
 * Gathers bytes for the client. During login a server sends many small
 * messages in one segment; one write for all of them, not one per message,
 * halves the router's syscalls per connection and wakes the client once.
 */
static bool out_put(struct session *s, const void *p, size_t n)
{
	struct login *L = s->login;
	const uint8_t *src = p;

	while (n > 0) {
		size_t c;

		if (L->out == NULL) {
			L->out = block_get();
			L->outlen = 0;
			if (L->out == NULL) {
				session_close(s);
				return false;
			}
		}
		c = SPLICE_BLOCK_SIZE - L->outlen < n ? SPLICE_BLOCK_SIZE - L->outlen : n;
		memcpy(L->out->data + L->outlen, src, c);
		L->outlen += c;
		src += c;
		n -= c;
		if (L->outlen == SPLICE_BLOCK_SIZE && !out_flush(s))
			return false;
	}
	return true;
}

/* Queues one whole message (type, body) for the client. */
static bool send_msg(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	uint8_t hdr[5] = {type, (uint8_t)((len + 4) >> 24), (uint8_t)((len + 4) >> 16),
			  (uint8_t)((len + 4) >> 8), (uint8_t)(len + 4)};

	return out_put(s, hdr, sizeof(hdr)) && out_put(s, body, len);
}

/*
 * AuthenticationSASL without SCRAM-SHA-256-PLUS: the client would bind its
 * proof to our certificate and the server to its own, and the login would
 * fail. Returns the new body length in out, or 0 to pass the message as is.
 */
static size_t strip_scram_plus(const uint8_t *body, size_t len, uint8_t *out, size_t cap)
{
	struct wbuf w;
	struct rd r;
	uint32_t code;
	bool removed = false;

	rd_init(&r, body, len);
	if (!rd_u32(&r, &code) || code != 10)
		return 0;
	wb_init(&w, out, cap);
	wb_u32(&w, code);
	for (;;) {
		const char *mech;
		size_t n;

		if (!rd_cstr(&r, &mech, &n))
			return 0;
		if (n == 0)
			break;
		if (strcmp(mech, "SCRAM-SHA-256-PLUS") == 0)
			removed = true;
		else
			wb_bytes(&w, mech, n + 1);
	}
	wb_u8(&w, 0);
	if (!removed || w.failed || rd_left(&r) != 0)
		return 0;
	return w.len;
}

/* One whole server message during the auth relay; false closes the session. */
static bool auth_message(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct login *L = s->login;
	struct proto_error_fields f;
	uint8_t sasl[256];
	size_t n;
	int rc;

	if (L->lc)
		return server_login_message(s, type, body, len);
	switch (type) {
	case 'R':
		if (len >= 4 && proto_get_u32(body) == 10)
			L->sasl_pending = true;
		n = len < sizeof(sasl) ? strip_scram_plus(body, len, sasl, sizeof(sasl)) : 0;
		if (n > 0) {
			slog(s, LOG_DEBUG, "removed SCRAM-SHA-256-PLUS from the server's mechanisms");
			return send_msg(s, type, sasl, n);
		}
		break;
	case 'K':
		/* BackendKeyData: pid, then a 4-byte (3.0) to 256-byte (3.2) secret. */
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			break;
		rc = cancel_register(s->rt->cancels, &s->ce, proto_get_u32(body), body + 4,
				     len - 4, (const struct sockaddr *)&L->target.addr);
		if (rc < 0)
			slog(s, LOG_WARN, "could not remember cancel key: %s", uv_strerror(rc));
		break;
	case 'E':
		if (proto_parse_error(body, len, &f) == PROTO_OK)
			slog(s, LOG_INFO, "server refused login sqlstate=%s message=\"%s\"",
			     f.sqlstate ? f.sqlstate : "?", f.message ? f.message : "");
		else
			slog(s, LOG_INFO, "server refused login");
		break;
	case 'Z':
		L->ready = true;
		break;
	default:
		break;
	}
	return send_msg(s, type, body, len);
}

/*
 * Frames server bytes during the auth relay and passes each whole message
 * on. Bytes after ReadyForQuery go on unparsed. False on a broken length.
 */
static bool relay_auth_msgs(struct session *s, const uint8_t *p, size_t n)
{
	struct login *L = s->login;

	for (;;) {
		size_t take;

		if (L->hlen < 5) {
			uint8_t type;
			size_t total;

			if (n == 0)
				break;
			take = 5 - L->hlen < n ? 5 - L->hlen : n;
			memcpy(L->hdr + L->hlen, p, take);
			L->hlen += take;
			p += take;
			n -= take;
			if (L->hlen < 5)
				break;
			if (proto_frame_msg(L->hdr, sizeof(L->hdr), AUTH_MSG_MAX, &type, &total) !=
			    PROTO_OK)
				return false;
			L->mlen = total - sizeof(L->hdr);
			L->blen = 0;
			if (L->mlen > L->msgcap) {
				uint8_t *m = realloc(L->msg, L->mlen);

				if (m == NULL)
					return false;
				L->msg = m;
				L->msgcap = L->mlen;
			}
		}
		take = L->mlen - L->blen < n ? L->mlen - L->blen : n;
		if (take)
			memcpy(L->msg + L->blen, p, take);
		L->blen += take;
		p += take;
		n -= take;
		if (L->blen < L->mlen)
			break;
		L->hlen = 0;
		if (!auth_message(s, L->hdr[0], L->msg, L->mlen))
			return true; /* closing already */
		if (s->state != CLIENT_AUTH_RELAY && s->state != CLIENT_SERVER_LOGIN)
			return true;
		if (L->ready) {
			guard_scan_server(s, p, n);
			out_put(s, p, n);
			return true;
		}
	}
	return true;
}

static bool relay_auth(struct session *s, const uint8_t *p, size_t n)
{
	bool ok = relay_auth_msgs(s, p, n);

	if (s->login)
		out_flush(s);
	return ok;
}

/*
 * The client's SASLInitialResponse, when the server leg is TLS. A client on
 * TLS to us that saw no SCRAM-SHA-256-PLUS sends the gs2 flag 'y' ("I could
 * bind, you did not offer it"); a server on TLS takes that for a downgrade
 * attack and refuses. The flag is covered by the client's proof, so we
 * cannot change it: we say clearly what to do instead. Returns false when
 * the session was refused.
 */
static bool check_sasl_initial(struct session *s, const uint8_t *p, size_t n)
{
	struct login *L = s->login;
	size_t take = sizeof(L->cmsg) - L->clen < n ? sizeof(L->cmsg) - L->clen : n;
	struct rd r;
	uint8_t type;
	uint32_t mlen, dlen;
	const char *mech;
	size_t mechlen;
	const uint8_t *flag;

	memcpy(L->cmsg + L->clen, p, take);
	L->clen += take;
	rd_init(&r, L->cmsg, L->clen);
	/* Type 'p', length, mechanism name, data length, then the gs2 flag. */
	if (!rd_u8(&r, &type) || !rd_u32(&r, &mlen) || !rd_cstr(&r, &mech, &mechlen) ||
	    !rd_u32(&r, &dlen) || !rd_bytes(&r, 1, &flag)) {
		if (L->clen == sizeof(L->cmsg) || (L->clen >= 1 && type != 'p'))
			L->sasl_pending = false;
		return true;
	}
	L->sasl_pending = false;
	if (type != 'p' || flag[0] != 'y')
		return true;
	client_refuse(s, "28000",
		      "Connect with channel_binding=disable: the router ends your TLS, so SCRAM "
		      "channel binding cannot reach the server, and a TLS server refuses a "
		      "client that says it could bind. Or use server_tls_mode = disable on a "
		      "trusted network.",
		      "SCRAM channel binding cannot pass through the router to cluster \"%s\"",
		      s->cluster);
	return false;
}

static void start_reading(struct session *s, struct side *sd)
{
	int rc;

	if (sd->reading || s->closed)
		return;
	rc = uv_read_start((uv_stream_t *)&sd->tcp, splice_alloc_cb, read_cb);
	if (rc < 0) {
		slog(s, LOG_WARN, "read_start failed: %s", uv_strerror(rc));
		session_close(s);
		return;
	}
	sd->reading = true;
}

/* The server connection is ready (TCP, and TLS if any): log in. */
static void send_startup(struct session *s)
{
	struct login *L = s->login;
	int rc = side_send_copy(s, &s->sv, L->pkt, L->pktlen);

	/* A client may pipeline its first messages behind the startup packet. */
	if (rc == 0 && L->inlen > L->extra_off) {
		rc = side_send_copy(s, &s->sv, L->in + L->extra_off, L->inlen - L->extra_off);
		guard_sent(s, L->in + L->extra_off, L->inlen - L->extra_off);
	}
	if (rc < 0) {
		client_refuse(s, "08006", "Retry.",
			      "could not send the startup packet to cluster \"%s\": %s",
			      s->cluster, uv_strerror(rc));
		return;
	}
	if (L->lc) {
		/* We log in for the client; it waits for the answer to its statement. */
		set_state(s, CLIENT_SERVER_LOGIN);
		arm_timer(s, login_left(s));
		start_reading(s, &s->sv);
		return;
	}
	set_state(s, CLIENT_AUTH_RELAY);
	arm_timer(s, login_left(s));
	start_reading(s, &s->cl);
	start_reading(s, &s->sv);
}

static void connect_cb(uv_connect_t *req, int status)
{
	static const uint8_t ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
	struct session *s = req->data;
	struct login *L;

	if (status == UV_ECANCELED || s->closed || s->state != CLIENT_CONNECTING)
		return;
	L = s->login;
	if (status < 0) {
		client_refuse(s, "08006",
			      "The coordinator refused or dropped the connection; retry. Health "
			      "checks will mark it down if it stays unreachable.",
			      "could not connect to cluster \"%s\" coordinator %s:%u: %s",
			      s->cluster, L->target.host, L->target.port, uv_strerror(status));
		return;
	}
	uv_tcp_nodelay(&s->sv.tcp, 1);
	if (L->sv_ctx == NULL) {
		send_startup(s);
		return;
	}
	/* Ask for TLS first; the answer is one byte, 'S' or 'N'. */
	L->sv_phase = SV_SSL_ANSWER;
	if (side_send_copy(s, &s->sv, ssl_request, sizeof(ssl_request)) < 0) {
		client_refuse(s, "08006", "Retry.", "could not send SSLRequest to cluster \"%s\"",
			      s->cluster);
		return;
	}
	start_reading(s, &s->sv);
}

/* The server's one-byte answer to our SSLRequest. */
static void server_ssl_answer(struct session *s, struct block *b, size_t n)
{
	struct login *L = s->login;
	uint8_t answer = (uint8_t)b->data[0];

	block_put(b);
	/* Nothing may follow the answer: bytes here would be injected plaintext. */
	if (n != 1 || (answer != 'S' && answer != 'N')) {
		client_refuse(s, "08006", "Check the coordinator's TLS settings.",
			      "cluster \"%s\" coordinator %s:%u gave an invalid answer to "
			      "SSLRequest",
			      s->cluster, L->target.host, L->target.port);
		return;
	}
	if (answer == 'N') {
		if (L->sv_mode == TLS_SERVER_PREFER) {
			send_startup(s);
			return;
		}
		client_refuse(s, "08006",
			      "Enable ssl on the coordinator, or lower server_tls_mode on the "
			      "router.",
			      "cluster \"%s\" coordinator %s:%u does not accept TLS "
			      "(server_tls_mode = %s)",
			      s->cluster, L->target.host, L->target.port,
			      tls_server_mode_name(L->sv_mode));
		return;
	}
	s->sv.tls = tls_new(L->sv_ctx, false, L->target.host,
			    L->sv_mode == TLS_SERVER_VERIFY_FULL);
	if (s->sv.tls == NULL) {
		client_refuse(s, "08006", "Retry.", "out of memory for TLS");
		return;
	}
	L->sv_phase = SV_TLS_HANDSHAKE;
	/* The first step writes our ClientHello. */
	if (tls_handshake(s->sv.tls) == TLS_ERROR || flush_tls(s, &s->sv) < 0)
		client_refuse(s, "08006", "Check the coordinator's TLS settings.",
			      "TLS handshake with cluster \"%s\" coordinator failed: %s",
			      s->cluster, tls_error(s->sv.tls));
}

/* The tenant is known: its cluster, that cluster's writer, and a connection to it. */
static void connect_tenant(struct session *s, const struct startup *st, const struct tenant *tp,
			   size_t len)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct login *L = s->login;
	const struct cluster_cfg *cl;
	struct tenant t = *tp;
	char why[320];
	size_t idx;
	int rc;

	idx = route_lookup(cfg->pins, cfg->ring, t.name, t.len, &L->pinned);
	s->tenant = strdup(t.name);
	snprintf(s->cluster, sizeof(s->cluster), "%s", cfg->clusters[idx].name);
	if (s->tenant == NULL) {
		session_close(s);
		return;
	}
	if (!health_writer(rt->health, s->cluster, &L->target, why, sizeof(why))) {
		char hint[256];

		snprintf(hint, sizeof(hint),
			 "Only tenants of cluster \"%s\" are affected; retry once it has a healthy "
			 "coordinator.",
			 s->cluster);
		client_refuse(s, "57P03", hint, "cluster \"%s\" has no healthy coordinator (%s)",
			      s->cluster, why);
		return;
	}
	cl = &cfg->clusters[idx];
	L->sv_mode = cl->tls_mode;
	if (cl->tls_ctx)
		L->sv_ctx = tls_ctx_ref(cl->tls_ctx);
	if (t.strip_user || t.strip_database ||
	    t.source & (TENANT_SRC_USER | TENANT_SRC_DATABASE | TENANT_SRC_QUERY)) {
		L->fwd = malloc(FORWARD_CAP);
		L->pktlen = L->fwd ? startup_build_forward(st, &cfg->rule, &t, L->fwd, FORWARD_CAP) : 0;
		L->pkt = L->fwd;
		if (L->pktlen == 0) {
			client_refuse(s, "08P01", "Shorten the startup parameters.",
				      "startup packet too long after adding the tenant");
			return;
		}
	} else {
		L->pkt = L->in;
		L->pktlen = len;
	}
	L->extra_off = len;
	slog(s, LOG_INFO, "routed host=%s:%u by=%s%s", L->target.host, L->target.port,
	     L->pinned ? "pin" : "ring", L->lc ? " tenant_from=query" : "");
	rc = uv_tcp_init(rt->loop, &s->sv.tcp);
	if (rc < 0) {
		client_refuse(s, "08006", "Retry.", "could not create a socket: %s",
			      uv_strerror(rc));
		return;
	}
	s->sv.inited = true;
	s->sv.tcp.data = s;
	s->open_handles++;
	set_state(s, CLIENT_CONNECTING);
	arm_timer(s, cfg->server_connect_timeout_ms < login_left(s) ? cfg->server_connect_timeout_ms
								    : login_left(s));
	L->connect.data = s;
	rc = uv_tcp_connect(&L->connect, &s->sv.tcp, (const struct sockaddr *)&L->target.addr,
			    connect_cb);
	if (rc < 0)
		client_refuse(s, "08006", "Retry.",
			      "could not connect to cluster \"%s\" coordinator %s:%u: %s",
			      s->cluster, L->target.host, L->target.port, uv_strerror(rc));
}

/*
 * Tenant source `query`: no tenant in the startup packet, so no server yet.
 * We check the client's password ourselves (auth_file or auth_query), say
 * AuthenticationOk with a healthy coordinator's ParameterStatus values and
 * a BackendKeyData of our own, and answer SET/RESET/BEGIN/COMMIT/ROLLBACK
 * locally (to replay later) until a statement names the tenant. Then we log
 * in to that tenant's coordinator on the client's behalf, replay, send the
 * held messages in order, and splice.
 */

static bool gbuf_add(struct gbuf *g, const void *p, size_t n)
{
	if (n == 0)
		return true;
	if (g->len + n > LOCAL_HELD_MAX)
		return false;
	if (g->len + n > g->cap) {
		size_t cap = g->cap ? g->cap : 256;
		uint8_t *q;

		while (cap < g->len + n)
			cap *= 2;
		q = realloc(g->p, cap);
		if (q == NULL)
			return false;
		g->p = q;
		g->cap = cap;
	}
	memcpy(g->p + g->len, p, n);
	g->len += n;
	return true;
}

static void local_free(struct local *lc)
{
	if (lc == NULL)
		return;
	health_auth_cancel(lc->aq);
	secret_clear(&lc->secret);
	OPENSSL_cleanse(&lc->ss, sizeof(lc->ss));
	OPENSSL_cleanse(&lc->sc, sizeof(lc->sc));
	free(lc->cin.p);
	free(lc->held.p);
	free(lc->replay.p);
	free(lc);
}

/* An ERROR (not FATAL) for a client we answer ourselves; the session goes on. */
static void local_error(struct session *s, const char *sqlstate, const char *hint, const char *fmt,
			...) PRINTF_LIKE(4, 5);

static void local_error(struct session *s, const char *sqlstate, const char *hint, const char *fmt,
			...)
{
	char msg[768];
	uint8_t buf[1536];
	struct wbuf w;
	va_list ap;
	int n;

	n = snprintf(msg, sizeof(msg), "tenant-router: ");
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	slog(s, LOG_DEBUG, "error sqlstate=%s reason=\"%s\"", sqlstate, msg + n);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", sqlstate, msg, NULL, hint);
	if (!w.failed)
		out_put(s, buf, w.len);
}

static void send_ready(struct session *s, char txn)
{
	uint8_t t = (uint8_t)txn;

	send_msg(s, 'Z', &t, 1);
}

static void send_auth_request(struct session *s, uint32_t code, const void *data, size_t n)
{
	uint8_t buf[600];
	struct wbuf w;

	wb_init(&w, buf, sizeof(buf));
	wb_u32(&w, code);
	wb_bytes(&w, data, n);
	if (!w.failed)
		send_msg(s, 'R', buf, w.len);
}

static void refuse_password(struct session *s)
{
	client_refuse(s, "28P01", "Check the user name and password.",
		      "password authentication failed for user \"%s\"", s->login->lc->user);
}

static void local_process(struct session *s);

/* The client is who it says: log it in to the router, then wait for the tenant. */
static void local_auth_ok(struct session *s)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	uint8_t buf[2048], kd[8];
	const struct startup_param *app;
	struct startup st;
	const char *why;
	size_t n;

	send_auth_request(s, 0, NULL, 0);
	n = health_parameter_status(s->rt->health, buf, sizeof(buf));
	out_put(s, buf, n);
	if (startup_parse(L->in, L->extra_off, &st, &why) == PROTO_OK &&
	    (app = startup_get(&st, "application_name")) != NULL) {
		struct wbuf w;

		wb_init(&w, buf, sizeof(buf));
		wb_cstr(&w, "application_name");
		wb_cstr(&w, app->val);
		if (!w.failed)
			send_msg(s, 'S', buf, w.len);
	}
	if (!auth_random(&lc->pid, sizeof(lc->pid)) || !auth_random(lc->key, sizeof(lc->key))) {
		client_refuse(s, "08006", "Retry.", "no random bytes for a cancel key");
		return;
	}
	lc->pid = (lc->pid & 0x7fffffffu) | 1u;
	kd[0] = (uint8_t)(lc->pid >> 24);
	kd[1] = (uint8_t)(lc->pid >> 16);
	kd[2] = (uint8_t)(lc->pid >> 8);
	kd[3] = (uint8_t)lc->pid;
	memcpy(kd + 4, lc->key, 4);
	send_msg(s, 'K', kd, sizeof(kd));
	lc->txn = 'I';
	send_ready(s, lc->txn);
	lc->phase = LP_DONE;
	set_state(s, CLIENT_NO_TENANT);
	uv_timer_stop(&s->timer);
	slog(s, LOG_INFO, "logged in at the router user=%s, waiting for the tenant", lc->user);
}

/* Ask for the password, the way the user's secret allows. */
static void local_challenge(struct session *s)
{
	struct local *lc = s->login->lc;
	static const char mechs[] = "SCRAM-SHA-256\0";

	if (s->rt->cfg->auth_type == AUTH_MD5 && lc->secret.kind != SECRET_SCRAM) {
		if (!auth_random(lc->salt, sizeof(lc->salt))) {
			client_refuse(s, "08006", "Retry.", "no random bytes for a salt");
			return;
		}
		send_auth_request(s, 5, lc->salt, sizeof(lc->salt));
		lc->phase = LP_MD5;
	} else {
		auth_mock_salt(lc->user, &lc->secret);
		send_auth_request(s, 10, mechs, sizeof(mechs));
		lc->phase = LP_SASL_FIRST;
	}
	local_process(s);
}

static void auth_query_done(void *arg, bool ok, const char *secret, const char *why)
{
	struct session *s = arg;
	struct local *lc;

	/* The request frees itself after this call: forget it first, in every case. */
	if (s->login && s->login->lc)
		s->login->lc->aq = NULL;
	if (s->closed || s->state != CLIENT_LOCAL_AUTH)
		return;
	lc = s->login->lc;
	if (!ok) {
		client_refuse(s, "08006", "Check auth_query and the auth_cluster's health connection.",
			      "could not look up user \"%s\" with auth_query: %s", lc->user, why);
		return;
	}
	if (!secret_parse(secret, &lc->secret)) {
		client_refuse(s, "28000", "Check the password stored for this user.",
			      "the secret auth_query returned for user \"%s\" is malformed", lc->user);
		return;
	}
	local_challenge(s);
}

static void local_start(struct session *s, const struct startup *st, size_t len)
{
	struct login *L = s->login;
	const struct config *cfg = s->rt->cfg;
	const struct startup_param *u = startup_get(st, "user"), *d = startup_get(st, "database");
	struct local *lc = calloc(1, sizeof(*lc));

	if (lc == NULL) {
		session_close(s);
		return;
	}
	L->lc = lc;
	set_state(s, CLIENT_LOCAL_AUTH);
	if (u == NULL || u->vlen == 0 || u->vlen >= sizeof(lc->user)) {
		client_refuse(s, "28000", "Give a user name.",
			      "no valid PostgreSQL user name in the startup packet");
		return;
	}
	memcpy(lc->user, u->val, u->vlen + 1);
	snprintf(lc->database, sizeof(lc->database), "%s", d && d->vlen ? d->val : lc->user);
	/* Bytes sent after the packet are the client's first messages. */
	L->extra_off = len;
	if (L->inlen > len && !gbuf_add(&lc->cin, L->in + len, L->inlen - len)) {
		session_close(s);
		return;
	}
	L->inlen = len;
	start_reading(s, &s->cl);
	if (cfg->auth_type == AUTH_TRUST) {
		local_auth_ok(s);
		local_process(s);
		return;
	}
	if (cfg->userlist && userlist_get(cfg->userlist, lc->user, &lc->secret)) {
		local_challenge(s);
		return;
	}
	if (cfg->auth_query) {
		lc->aq = health_auth_start(s->rt->health, s->rt->loop,
					   cfg->cluster_names[cfg->auth_cluster], cfg->auth_query,
					   lc->user, auth_query_done, s);
		if (lc->aq == NULL)
			client_refuse(s, "08006", "Retry.", "could not start auth_query");
		return;
	}
	/* An unknown user still gets a challenge, so users cannot be probed. */
	local_challenge(s);
}

/* A PasswordMessage / SASL message from the client during our login. */
static void local_auth_msg(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct local *lc = s->login->lc;
	char out[512];
	size_t olen = 0;
	const char *why = "malformed message";
	struct rd r;
	int rc;

	if (type != 'p') {
		client_refuse(s, "08P01", "Answer the authentication request.",
			      "expected a password message, got message type 0x%02x", type);
		return;
	}
	rd_init(&r, body, len);
	switch (lc->phase) {
	case LP_MD5: {
		const char *resp;
		size_t rl;

		if (!rd_cstr(&r, &resp, &rl) ||
		    !auth_md5_check(&lc->secret, lc->user, lc->salt, resp)) {
			refuse_password(s);
			return;
		}
		local_auth_ok(s);
		return;
	}
	case LP_SASL_FIRST: {
		const char *mech;
		size_t ml;
		uint32_t dlen;
		const uint8_t *data;

		if (!rd_cstr(&r, &mech, &ml) || !rd_u32(&r, &dlen) || dlen == 0xffffffffu ||
		    !rd_bytes(&r, dlen, &data)) {
			client_refuse(s, "08P01", "Use a PostgreSQL client.",
				      "malformed SASLInitialResponse");
			return;
		}
		if (strcmp(mech, "SCRAM-SHA-256") != 0) {
			client_refuse(s, "28000", "Use SCRAM-SHA-256 with channel_binding=disable.",
				      "SASL mechanism \"%s\" is not offered", mech);
			return;
		}
		rc = scram_server_first(&lc->ss, &lc->secret, data, dlen, out, sizeof(out), &olen,
					&why);
		if (rc < 0) {
			client_refuse(s, "08P01", "Use a PostgreSQL client.", "SCRAM: %s", why);
			return;
		}
		send_auth_request(s, 11, out, olen);
		lc->phase = LP_SASL_FINAL;
		return;
	}
	case LP_SASL_FINAL:
		rc = scram_server_final(&lc->ss, body, len, out, sizeof(out), &olen, &why);
		if (rc < 0) {
			client_refuse(s, "08P01", "Use a PostgreSQL client.", "SCRAM: %s", why);
			return;
		}
		if (rc == 0) {
			refuse_password(s);
			return;
		}
		send_auth_request(s, 12, out, olen);
		lc->have_keys = lc->ss.have_client_key;
		local_auth_ok(s);
		return;
	case LP_SECRET:
	case LP_DONE:
		break;
	}
	client_refuse(s, "08P01", "Use a PostgreSQL client.", "unexpected password message");
}

static void route_query(struct session *s, const char *tenant, size_t tlen);

/* Appends a simple Query message with this text to g. */
static bool gbuf_add_query(struct gbuf *g, const char *sql, size_t n)
{
	uint8_t hdr[5] = {'Q', (uint8_t)((n + 5) >> 24), (uint8_t)((n + 5) >> 16),
			  (uint8_t)((n + 5) >> 8), (uint8_t)(n + 5)};
	uint8_t nul = 0;

	return gbuf_add(g, hdr, sizeof(hdr)) && gbuf_add(g, sql, n) && gbuf_add(g, &nul, 1);
}

static bool only_space(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!strchr(" \t\n\r\f\v", p[i]))
			return false;
	}
	return true;
}

static void local_rule(const struct config *cfg, struct query_rule *rule)
{
	rule->key = cfg->rule.key;
	rule->column = cfg->tenant_column;
}

/* Says why a statement before the tenant cannot run, as an ERROR. */
static void no_tenant_error(struct session *s, const struct query_tenant *q)
{
	const char *key = s->rt->cfg->rule.key;
	char hint[300];

	snprintf(hint, sizeof(hint),
		 "Name the tenant first: SET %s = '<tenant>' (or put it in the connection's "
		 "options). SET, RESET, BEGIN, COMMIT and ROLLBACK are accepted before it.",
		 key);
	switch (q->kind) {
	case QUERY_CONFLICT:
		local_error(s, "08004", hint, "the statement names more than one tenant");
		break;
	case QUERY_UNKNOWN:
		local_error(s, "08004", hint,
			    "the tenant in this statement is not a constant the router can read");
		break;
	case QUERY_INVALID:
		local_error(s, "42601", hint,
			    "syntax error (the router parses statements until the tenant is known)");
		break;
	default:
		local_error(s, "08004", hint,
			    "no tenant yet: this session is not connected to a cluster until a "
			    "statement names the tenant (\"%s\")",
			    key);
		break;
	}
	if (s->login->lc->txn == 'T')
		s->login->lc->txn = 'E';
}

/* A simple Query before the tenant is known. */
static void no_tenant_query(struct session *s, const uint8_t *msg, size_t total)
{
	struct local *lc = s->login->lc;
	const char *sql = (const char *)msg + 5;
	size_t n = strnlen(sql, total - 5);
	struct query_rule rule;
	struct query_tenant q;

	if (only_space(sql, n)) {
		send_msg(s, 'I', NULL, 0);
		send_ready(s, lc->txn);
		return;
	}
	local_rule(s->rt->cfg, &rule);
	query_find_tenant(sql, n, &rule, &q);
	if (q.kind == QUERY_OTHER && q.nstmts == 0) {
		/* Only comments or semicolons: what PostgreSQL answers to an empty query. */
		send_msg(s, 'I', NULL, 0);
		send_ready(s, lc->txn);
		return;
	}
	if (q.kind == QUERY_TENANT) {
		if (!gbuf_add(&lc->held, msg, total)) {
			client_refuse(s, "54000", "Send smaller messages.", "message too long");
			return;
		}
		route_query(s, q.tenant, q.tenant_len);
		return;
	}
	if (q.kind == QUERY_LOCAL) {
		if (!gbuf_add(&lc->replay, msg, total)) {
			client_refuse(s, "54000", "Name the tenant sooner.",
				      "too many statements before the tenant");
			return;
		}
		lc->nreplay++;
		for (size_t i = 0; i < q.nlocal; i++) {
			send_msg(s, 'C', (const uint8_t *)q.local[i].tag, strlen(q.local[i].tag) + 1);
			if (q.local[i].txn)
				lc->txn = q.local[i].txn;
		}
		send_ready(s, lc->txn);
		return;
	}
	no_tenant_error(s, &q);
	send_ready(s, lc->txn);
}

#define BATCH_STMTS 16

/* What we learnt about one Parse of an extended-protocol batch. */
struct xstmt {
	char name[64];
	struct query_tenant q;
	bool empty;
	const char *sql; /* points into held */
	size_t sqllen;
	uint16_t ntypes;
	uint32_t types[8];
};

static struct xstmt *xstmt_find(struct xstmt *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].name, name) == 0)
			return &v[i];
	}
	return NULL;
}

/*
 * The text of parameter $param of a Bind body. Text format as is; binary
 * integers (int2/int4/int8, by the Parse's type) as decimal.
 */
static bool bind_param_text(const uint8_t *body, size_t len, const struct xstmt *st,
			    char *out, size_t cap, size_t *outlen)
{
	struct rd r;
	const char *portal, *stmt;
	size_t pl, sl;
	uint16_t nfmt, nparams, fmt = 0;
	const uint8_t *v = NULL;
	uint32_t vlen = 0;
	int param = st->q.param;

	rd_init(&r, body, len);
	if (!rd_cstr(&r, &portal, &pl) || !rd_cstr(&r, &stmt, &sl) || !rd_u16(&r, &nfmt))
		return false;
	for (uint16_t i = 0; i < nfmt; i++) {
		uint16_t f;

		if (!rd_u16(&r, &f))
			return false;
		if (nfmt == 1 || i + 1 == param)
			fmt = f;
	}
	if (!rd_u16(&r, &nparams) || param < 1 || param > nparams)
		return false;
	for (int i = 1; i <= param; i++) {
		if (!rd_u32(&r, &vlen))
			return false;
		if (vlen == 0xffffffffu) {
			if (i == param)
				return false; /* NULL: no tenant */
			continue;
		}
		if (!rd_bytes(&r, vlen, &v))
			return false;
	}
	if (fmt == 0) {
		if (vlen == 0 || vlen >= cap || memchr(v, 0, vlen))
			return false;
		memcpy(out, v, vlen);
		out[vlen] = '\0';
		*outlen = vlen;
		return true;
	}
	/* Binary: only integers whose type the Parse named. */
	if (param <= st->ntypes && param <= (int)ARRAY_SIZE(st->types)) {
		uint32_t oid = st->types[param - 1];
		long long x;
		int n;

		if (oid == 21 && vlen == 2)
			x = (int16_t)((uint16_t)v[0] << 8 | v[1]);
		else if (oid == 23 && vlen == 4)
			x = (int32_t)proto_get_u32(v);
		else if (oid == 20 && vlen == 8)
			x = (long long)((uint64_t)proto_get_u32(v) << 32 | proto_get_u32(v + 4));
		else
			return false;
		n = snprintf(out, cap, "%lld", x);
		*outlen = (size_t)n;
		return n > 0 && (size_t)n < cap;
	}
	return false;
}

/* Sync after an extended-protocol batch before the tenant is known. */
static void no_tenant_sync(struct session *s)
{
	struct local *lc = s->login->lc;
	struct xstmt *v = calloc(BATCH_STMTS, sizeof(*v));
	size_t nv = 0, off = 0;
	struct query_rule rule;
	char tenant[STARTUP_MAX_TENANT_LEN + 1];
	size_t tlen = 0;
	bool found = false, conflict = false, local = true;
	struct query_tenant bad = {.kind = QUERY_OTHER};
	struct xstmt *cur = NULL;

	if (v == NULL) {
		session_close(s);
		return;
	}
	local_rule(s->rt->cfg, &rule);
	/* First pass: the tenant, if a Parse or a Bind names one. */
	while (off < lc->held.len) {
		const uint8_t *m = lc->held.p + off;
		size_t total = 1 + proto_get_u32(m + 1);
		const uint8_t *body = m + 5;
		size_t blen = total - 5;
		struct rd r;

		off += total;
		rd_init(&r, body, blen);
		if (m[0] == 'P') {
			const char *name, *sql;
			size_t nl, ql;
			struct xstmt *st;

			if (!rd_cstr(&r, &name, &nl) || !rd_cstr(&r, &sql, &ql) || nl >= 64) {
				local = false;
				continue;
			}
			st = xstmt_find(v, nv, name);
			if (st == NULL && nv < BATCH_STMTS)
				st = &v[nv++];
			if (st == NULL) {
				local = false;
				continue;
			}
			memset(st, 0, sizeof(*st));
			memcpy(st->name, name, nl + 1);
			st->sql = sql;
			st->sqllen = ql;
			if (rd_u16(&r, &st->ntypes)) {
				for (uint16_t i = 0; i < st->ntypes && i < ARRAY_SIZE(st->types); i++) {
					if (!rd_u32(&r, &st->types[i]))
						break;
				}
			}
			st->empty = only_space(sql, ql);
			if (st->empty)
				continue;
			query_find_tenant(sql, ql, &rule, &st->q);
			if (st->q.kind == QUERY_OTHER && st->q.nstmts == 0) {
				st->empty = true;
				continue;
			}
			if (st->q.kind == QUERY_TENANT) {
				if (found && (tlen != st->q.tenant_len ||
					      memcmp(tenant, st->q.tenant, tlen) != 0))
					conflict = true;
				memcpy(tenant, st->q.tenant, st->q.tenant_len + 1);
				tlen = st->q.tenant_len;
				found = true;
			}
			if (st->q.kind != QUERY_LOCAL || st->q.nlocal != 1) {
				local = false;
				if (st->q.kind != QUERY_PARAM && st->q.kind != QUERY_TENANT)
					bad = st->q;
			}
		} else if (m[0] == 'B') {
			const char *portal, *name;
			size_t pl, nl;
			char val[STARTUP_MAX_TENANT_LEN + 1];
			size_t vl;
			struct xstmt *st;

			if (!rd_cstr(&r, &portal, &pl) || !rd_cstr(&r, &name, &nl))
				continue;
			st = xstmt_find(v, nv, name);
			/* A $n tenant place, alone or next to a literal (which it must match). */
			if (st == NULL || st->q.param == 0 ||
			    (st->q.kind != QUERY_PARAM && st->q.kind != QUERY_TENANT))
				continue;
			if (!bind_param_text(body, blen, st, val, sizeof(val), &vl)) {
				bad.kind = QUERY_UNKNOWN;
				continue;
			}
			if (found && (tlen != vl || memcmp(tenant, val, vl) != 0))
				conflict = true;
			memcpy(tenant, val, vl + 1);
			tlen = vl;
			found = true;
		}
	}
	if (conflict) {
		bad.kind = QUERY_CONFLICT;
		found = false;
	}
	if (found) {
		free(v);
		route_query(s, tenant, tlen);
		return;
	}
	/* Second pass: answer it ourselves, or refuse it as a whole. */
	off = 0;
	while (off < lc->held.len) {
		const uint8_t *m = lc->held.p + off;
		size_t total = 1 + proto_get_u32(m + 1);

		off += total;
		if (!local) {
			if (m[0] == 'S') {
				no_tenant_error(s, &bad);
				send_ready(s, lc->txn);
			}
			continue;
		}
		switch (m[0]) {
		case 'P':
			send_msg(s, '1', NULL, 0);
			break;
		case 'B': {
			const char *portal, *name;
			size_t pl, nl;
			struct rd r;

			rd_init(&r, m + 5, total - 5);
			cur = rd_cstr(&r, &portal, &pl) && rd_cstr(&r, &name, &nl)
				      ? xstmt_find(v, nv, name)
				      : NULL;
			send_msg(s, '2', NULL, 0);
			break;
		}
		case 'D': {
			static const uint8_t noparams[2] = {0, 0};

			if (total > 5 && m[5] == 'S')
				send_msg(s, 't', noparams, sizeof(noparams));
			send_msg(s, 'n', NULL, 0);
			break;
		}
		case 'E':
			if (cur == NULL || cur->empty) {
				send_msg(s, 'I', NULL, 0);
				break;
			}
			send_msg(s, 'C', (const uint8_t *)cur->q.local[0].tag,
				 strlen(cur->q.local[0].tag) + 1);
			if (cur->q.local[0].txn)
				lc->txn = cur->q.local[0].txn;
			if (!gbuf_add_query(&lc->replay, cur->sql, cur->sqllen)) {
				free(v);
				client_refuse(s, "54000", "Name the tenant sooner.",
					      "too many statements before the tenant");
				return;
			}
			lc->nreplay++;
			break;
		case 'C':
			send_msg(s, '3', NULL, 0);
			break;
		case 'S':
			send_ready(s, lc->txn);
			break;
		default:
			break;
		}
	}
	free(v);
	lc->held.len = 0;
}

/* One whole client message while we wait for the tenant. */
static void no_tenant_msg(struct session *s, const uint8_t *msg, size_t total)
{
	struct local *lc = s->login->lc;

	switch (msg[0]) {
	case 'Q':
		no_tenant_query(s, msg, total);
		break;
	case 'P':
	case 'B':
	case 'D':
	case 'E':
	case 'C':
	case 'H':
	case 'S':
		if (!gbuf_add(&lc->held, msg, total)) {
			client_refuse(s, "54000", "Send smaller batches.", "batch too long");
			return;
		}
		if (msg[0] == 'S')
			no_tenant_sync(s);
		break;
	case 'X':
		begin_drain(s, &s->cl);
		break;
	default:
		local_error(s, "08004", "Name the tenant first.",
			    "message type 0x%02x is not accepted before the tenant is known", msg[0]);
		send_ready(s, lc->txn);
		break;
	}
}

/* Handles the client's whole messages in lc->cin while we answer it ourselves. */
static void local_process(struct session *s)
{
	struct local *lc = s->login->lc;

	while (!s->closed && (s->state == CLIENT_LOCAL_AUTH || s->state == CLIENT_NO_TENANT)) {
		const uint8_t *p = lc->cin.p + lc->cin_off;
		size_t n = lc->cin.len - lc->cin_off;
		uint8_t type;
		size_t total;

		if (s->state == CLIENT_LOCAL_AUTH && lc->phase == LP_SECRET)
			return;
		if (n < 5)
			break;
		if (proto_frame_msg(p, n, LOCAL_MSG_MAX, &type, &total) != PROTO_OK) {
			client_refuse(s, "08P01", "Use a PostgreSQL client.",
				      "invalid message length");
			return;
		}
		if (n < total)
			break;
		lc->cin_off += total;
		if (s->state == CLIENT_LOCAL_AUTH)
			local_auth_msg(s, type, p + 5, total - 5);
		else
			no_tenant_msg(s, p, total);
	}
	if (s->closed || s->state == CLIENT_CLOSING || s->login == NULL)
		return;
	if (lc->cin_off > 0 && (s->state == CLIENT_LOCAL_AUTH || s->state == CLIENT_NO_TENANT)) {
		memmove(lc->cin.p, lc->cin.p + lc->cin_off, lc->cin.len - lc->cin_off);
		lc->cin.len -= lc->cin_off;
		lc->cin_off = 0;
	}
	out_flush(s);
}

/* Client bytes while we answer it ourselves. Takes b. */
static void local_in(struct session *s, struct block *b, size_t n)
{
	bool ok = gbuf_add(&s->login->lc->cin, b->data, n);

	block_put(b);
	if (!ok) {
		client_refuse(s, "54000", "Send smaller messages.", "message too long");
		return;
	}
	local_process(s);
}

/* The password for our login to the server, if we have one. */
static bool server_password(struct session *s, char *out, size_t cap)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	const struct config *cfg = s->rt->cfg;

	if (lc->secret.kind == SECRET_PLAIN) {
		snprintf(out, cap, "%s", lc->secret.plain);
		return true;
	}
	return cfg->server_passfile &&
	       passfile_lookup(cfg->server_passfile, L->target.host, L->target.port, lc->database,
			       lc->user, out, cap);
}

static void server_login_failed(struct session *s, const char *sqlstate, const char *why)
{
	client_refuse(s, sqlstate,
		      "The router logs in to the cluster for clients that route by query: give "
		      "the router and every cluster the same SCRAM verifier for this user, or put "
		      "the password in server_passfile.",
		      "could not log in to cluster \"%s\" as user \"%s\": %s", s->cluster,
		      s->login->lc->user, why);
}

static bool send_to_server(struct session *s, uint8_t type, const void *body, size_t len)
{
	uint8_t hdr[5] = {type, (uint8_t)((len + 4) >> 24), (uint8_t)((len + 4) >> 16),
			  (uint8_t)((len + 4) >> 8), (uint8_t)(len + 4)};

	if (side_send_copy(s, &s->sv, hdr, sizeof(hdr)) < 0 ||
	    (len && side_send_copy(s, &s->sv, body, len) < 0)) {
		session_close(s);
		return false;
	}
	return true;
}

/* An authentication request from the server we log in to for the client. */
static bool server_auth_request(struct session *s, const uint8_t *body, size_t len)
{
	struct local *lc = s->login->lc;
	char pw[AUTH_MAX_SECRET], out[600], md5[36];
	uint8_t msg[700];
	struct wbuf w;
	size_t olen;
	const char *why = "malformed message";
	uint32_t code;

	if (len < 4)
		return false;
	code = proto_get_u32(body);
	switch (code) {
	case 0:
		return true;
	case 3:
		if (!server_password(s, pw, sizeof(pw))) {
			server_login_failed(s, "28P01", "the server asks for a password we do not have");
			return true;
		}
		return send_to_server(s, 'p', pw, strlen(pw) + 1);
	case 5:
		if (len < 8)
			return false;
		if (server_password(s, pw, sizeof(pw))) {
			auth_md5_hash(pw, lc->user, md5);
			auth_md5_salted(md5, body + 4, out);
		} else if (lc->secret.kind == SECRET_MD5) {
			auth_md5_salted(lc->secret.md5, body + 4, out);
		} else {
			server_login_failed(s, "28P01",
					    "the server asks for md5 and the router has no md5 "
					    "secret or password");
			return true;
		}
		return send_to_server(s, 'p', out, strlen(out) + 1);
	case 10:
		if (!memmem(body + 4, len - 4, "SCRAM-SHA-256\0", 14)) {
			server_login_failed(s, "08006", "the server offers no SCRAM-SHA-256");
			return true;
		}
		if (server_password(s, pw, sizeof(pw))) {
			scram_client_init_password(&lc->sc, pw);
		} else if (lc->have_keys && lc->secret.kind == SECRET_SCRAM) {
			scram_client_init_keys(&lc->sc, lc->ss.client_key, lc->secret.server_key,
					       lc->secret.salt, lc->secret.saltlen,
					       lc->secret.iterations);
		} else {
			server_login_failed(s, "28P01",
					    "the server asks for SCRAM and the router has neither "
					    "the client's SCRAM keys nor a password");
			return true;
		}
		olen = scram_client_first(&lc->sc, out, sizeof(out));
		wb_init(&w, msg, sizeof(msg));
		wb_cstr(&w, "SCRAM-SHA-256");
		wb_u32(&w, (uint32_t)olen);
		wb_bytes(&w, out, olen);
		if (olen == 0 || w.failed)
			return false;
		return send_to_server(s, 'p', msg, w.len);
	case 11:
		if (scram_client_final(&lc->sc, body + 4, len - 4, out, sizeof(out), &olen, &why) <
		    0) {
			server_login_failed(s, "28P01", why);
			return true;
		}
		return send_to_server(s, 'p', out, olen);
	case 12:
		if (scram_client_verify(&lc->sc, body + 4, len - 4, &why) < 0) {
			server_login_failed(s, "08006", why);
			return true;
		}
		return true;
	default:
		snprintf(out, sizeof(out), "unsupported authentication request %u", code);
		server_login_failed(s, "08006", out);
		return true;
	}
}

/* Logged in and replayed: the held messages go to the server, then we splice. */
static void server_login_done(struct session *s)
{
	struct login *L = s->login;
	struct local *lc = L->lc;

	if (lc->replay_err[0]) {
		uint8_t buf[1024];
		struct wbuf w;

		wb_init(&w, buf, sizeof(buf));
		proto_error_response(&w, "WARNING", "01000", lc->replay_err, NULL,
				     "A SET given before the tenant failed on the cluster.");
		/* An ErrorResponse body with severity WARNING is a NoticeResponse. */
		if (!w.failed) {
			buf[0] = 'N';
			out_put(s, buf, w.len);
		}
	}
	if (lc->held.len && side_send_copy(s, &s->sv, lc->held.p, lc->held.len) < 0) {
		session_close(s);
		return;
	}
	guard_sent(s, lc->held.p, lc->held.len);
	L->ready = true;
}

/* One message from the server while we log in for the client and replay. */
static bool server_login_message(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	struct proto_error_fields f;
	int rc;

	switch (type) {
	case 'R':
		if (!server_auth_request(s, body, len))
			server_login_failed(s, "08P01", "malformed authentication request");
		return true;
	case 'S':
	case 'N':
		return send_msg(s, type, body, len);
	case 'K':
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			return true;
		rc = cancel_register_mapped(s->rt->cancels, &s->ce, lc->pid, lc->key,
					    sizeof(lc->key), proto_get_u32(body), body + 4, len - 4,
					    (const struct sockaddr *)&L->target.addr);
		if (rc < 0)
			slog(s, LOG_WARN, "could not remember cancel key: %s", uv_strerror(rc));
		return true;
	case 'E':
		if (proto_parse_error(body, len, &f) != PROTO_OK)
			f.message = f.sqlstate = NULL;
		if (lc->server_ready) {
			if (lc->replay_err[0] == '\0')
				snprintf(lc->replay_err, sizeof(lc->replay_err),
					 "tenant-router: replaying a statement given before the "
					 "tenant on cluster \"%s\" failed: %s",
					 s->cluster, f.message ? f.message : "?");
			return true;
		}
		client_refuse(s, f.sqlstate && strlen(f.sqlstate) == 5 ? f.sqlstate : "08006",
			      "The router logs in to the cluster for clients that route by query.",
			      "cluster \"%s\" refused the login of user \"%s\": %s", s->cluster,
			      lc->user, f.message ? f.message : "?");
		return true;
	case 'Z':
		if (!lc->server_ready) {
			lc->server_ready = true;
			slog(s, LOG_DEBUG, "logged in to the server, replaying %u statements",
			     lc->nreplay);
			if (lc->nreplay > 0) {
				lc->replay_left = lc->nreplay;
				if (side_send_copy(s, &s->sv, lc->replay.p, lc->replay.len) < 0) {
					session_close(s);
					return true;
				}
				return true;
			}
		} else if (lc->replay_left > 0 && --lc->replay_left > 0) {
			return true;
		}
		server_login_done(s);
		return true;
	default:
		/* Answers to the replay: the client had its answers from us. */
		return true;
	}
}

/* The tenant is known: route it, connect, log in for the client. */
static void route_query(struct session *s, const char *tenant, size_t tlen)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	struct startup st;
	struct tenant t;
	const char *why = NULL;

	/* Whatever the client sent after this goes to the server after it. */
	if (!gbuf_add(&lc->held, lc->cin.p + lc->cin_off, lc->cin.len - lc->cin_off)) {
		client_refuse(s, "54000", "Send smaller messages.", "message too long");
		return;
	}
	lc->cin.len = lc->cin_off = 0;
	memset(&t, 0, sizeof(t));
	memcpy(t.name, tenant, tlen);
	t.name[tlen] = '\0';
	t.len = tlen;
	t.source = TENANT_SRC_QUERY;
	if (startup_parse(L->in, L->extra_off, &st, &why) != PROTO_OK) {
		session_close(s);
		return;
	}
	set_state(s, CLIENT_ROUTING);
	stop_reading(&s->cl);
	out_flush(s);
	s->login_deadline = uv_now(s->rt->loop) + s->rt->cfg->client_login_timeout_ms;
	connect_tenant(s, &st, &t, L->extra_off);
}


/*
 * The stickiness guard. A spliced session is bound to one cluster; a
 * statement that sets tenant_key (SET, set_config, a sqlcommenter comment)
 * to a tenant of another cluster must not reach the server. So, when the
 * guard is on, we frame the client's messages: a Query or Parse whose text
 * does not contain the key's last word (a case-insensitive byte search) goes
 * on untouched and unparsed; one that does is parsed (query.c). A Bind is
 * looked at only for statements whose Parse had set_config(key, $n).
 *
 * A refused statement is replaced by a Sync, and the server's answer to it
 * (a ReadyForQuery) gets our ErrorResponse in front, so the client sees the
 * error in its place in the message order: after the answers to what it
 * sent before, whatever was in flight. For the extended protocol, the
 * refused message and everything after it up to the client's Sync are
 * dropped, as PostgreSQL drops them after an error. If the server already
 * reported an error in that batch, it would have skipped the refused
 * message too, so we add none. To find that ReadyForQuery we count them:
 * the server's messages are framed too (only their headers are read).
 */

/* A refused statement waiting for its ReadyForQuery. */
struct refusal {
	struct refusal *next;
	uint64_t sync; /* the number of the Sync that stands in for it */
	size_t len;
	uint8_t msg[]; /* the ErrorResponse */
};

/* A prepared statement whose Parse had set_config(key, $param). */
struct flagged {
	struct flagged *next;
	int param;
	uint16_t ntypes;
	uint32_t types[8];
	char name[];
};

static bool guard_send(struct session *s, const void *p, size_t n)
{
	if (n == 0)
		return true;
	if (side_send_copy(s, &s->sv, p, n) < 0) {
		send_failed(s, &s->sv, UV_EPIPE);
		return false;
	}
	return true;
}

/* Counts what the server will answer with a ReadyForQuery. */
static inline void guard_count(struct guard *g, uint8_t type)
{
	if (type == 'Q' || type == 'S' || type == 'F')
		g->syncs++;
}

/*
 * Advances over p[*i, n) until a message header completes (true: its type
 * is hdr[0] and *left its body length) or the bytes run out (false).
 */
static bool frame_next(uint8_t hdr[5], uint8_t *hlen, uint32_t *left, const uint8_t *p, size_t n,
		       size_t *i)
{
	while (*i < n) {
		if (*left > 0) {
			size_t take = *left < n - *i ? *left : n - *i;

			*left -= (uint32_t)take;
			*i += take;
			continue;
		}
		hdr[(*hlen)++] = p[(*i)++];
		if (*hlen == 5) {
			*hlen = 0;
			*left = proto_get_u32(hdr + 1) - 4;
			return true;
		}
	}
	return false;
}

/* Tracks message boundaries in bytes sent to the server without looking at them. */
static void guard_sent(struct session *s, const uint8_t *p, size_t n)
{
	struct guard *g = &s->g;
	size_t i = 0;

	if (!g->on)
		return;
	while (frame_next(g->chdr, &g->chlen, &g->cleft, p, n, &i))
		guard_count(g, g->chdr[0]);
	/* A header cut here already went out: the guard cannot hold that message. */
	g->cforwarded = g->chlen > 0;
}

/* Tracks the server's messages: ReadyForQuery count, and errors since the last one. */
static void guard_scan_server(struct session *s, const uint8_t *p, size_t n)
{
	struct guard *g = &s->g;
	size_t i = 0;

	if (!g->on)
		return;
	while (frame_next(g->shdr, &g->shlen, &g->sleft, p, n, &i)) {
		if (g->shdr[0] == 'Z') {
			g->zs++;
			g->err = false;
		} else if (g->shdr[0] == 'E') {
			g->err = true;
		}
	}
}

/* Server bytes for the client while refusals wait: put each error before its ReadyForQuery. */
static void guard_server(struct session *s, struct block *b, size_t n)
{
	struct guard *g = &s->g;
	const uint8_t *p = (const uint8_t *)b->data;
	size_t i = 0, emit = 0;

	if (g->refusals == NULL && g->sheld == 0) {
		guard_scan_server(s, p, n);
		forward(s, &s->cl, b, n);
		return;
	}
	while (i < n && !s->closed) {
		size_t take, start;
		struct refusal *r;

		if (g->sleft > 0) {
			take = g->sleft < n - i ? g->sleft : n - i;
			g->sleft -= (uint32_t)take;
			i += take;
			continue;
		}
		/* A header: keep a partial one back, so that we can still put an error before it. */
		start = i;
		take = 5u - g->shlen < n - i ? 5u - g->shlen : n - i;
		if (g->shlen + take < 5) {
			if (side_send_copy(s, &s->cl, p + emit, start - emit) < 0)
				goto failed;
			memcpy(g->shdr + g->shlen, p + i, take);
			g->shlen += (uint8_t)take;
			g->sheld = g->shlen;
			i = emit = n;
			break;
		}
		memcpy(g->shdr + g->shlen, p + i, take);
		i += take;
		g->sleft = proto_get_u32(g->shdr + 1) - 4;
		if (side_send_copy(s, &s->cl, p + emit, start - emit) < 0)
			goto failed;
		emit = start;
		r = g->refusals;
		if (g->shdr[0] == 'Z' && r && r->sync == g->zs + 1) {
			g->refusals = r->next;
			if (!g->err && side_send_copy(s, &s->cl, r->msg, r->len) < 0) {
				free(r);
				goto failed;
			}
			free(r);
		}
		if (g->shdr[0] == 'Z') {
			g->zs++;
			g->err = false;
		} else if (g->shdr[0] == 'E') {
			g->err = true;
		}
		/* The part of this header kept back from the last block goes first. */
		if (g->sheld && side_send_copy(s, &s->cl, g->shdr, g->sheld) < 0)
			goto failed;
		g->sheld = 0;
		g->shlen = 0;
	}
	if (!s->closed && side_send_copy(s, &s->cl, p + emit, n - emit) < 0)
		goto failed;
	block_put(b);
	if (!s->closed)
		apply_pressure(s, &s->cl);
	return;
failed:
	block_put(b);
	send_failed(s, &s->cl, UV_EPIPE);
}

static void guard_refuse(struct session *s, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* Queues the error for a refused statement; the caller sends the Sync standing in for it. */
static void guard_refuse(struct session *s, const char *fmt, ...)
{
	struct guard *g = &s->g;
	char msg[768], hint[256];
	uint8_t buf[1536];
	struct refusal *r, **pp;
	struct wbuf w;
	va_list ap;
	int n;

	n = snprintf(msg, sizeof(msg), "tenant-router: ");
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	snprintf(hint, sizeof(hint),
		 "A session stays on the cluster it was routed to (\"%s\"). Open a new "
		 "connection for the other tenant.",
		 s->cluster);
	slog(s, LOG_INFO, "guard refused a statement: %s", msg + n);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", GUARD_SQLSTATE, msg, NULL, hint);
	r = malloc(sizeof(*r) + w.len);
	if (r == NULL || w.failed) {
		free(r);
		session_close(s);
		return;
	}
	memcpy(r->msg, buf, w.len);
	r->len = w.len;
	r->next = NULL;
	r->sync = g->syncs + 1;
	for (pp = &g->refusals; *pp; pp = &(*pp)->next)
		;
	*pp = r;
}

/* May this session switch to tenant (len bytes)? Queues the refusal if not. */
static bool guard_allows(struct session *s, const char *tenant, size_t len)
{
	const struct config *cfg = s->rt->cfg;
	size_t idx = route_lookup(cfg->pins, cfg->ring, tenant, len, NULL);
	const char *owner = cfg->clusters[idx].name;

	if (strcmp(owner, s->cluster) != 0) {
		guard_refuse(s,
			     "tenant \"%s\" belongs to cluster \"%s\"; this session is bound to "
			     "cluster \"%s\"",
			     tenant, owner, s->cluster);
		return false;
	}
	if (s->g.strict && s->tenant && (strlen(s->tenant) != len ||
					 memcmp(s->tenant, tenant, len) != 0)) {
		guard_refuse(s,
			     "this session is bound to tenant \"%s\" (guard = strict); it cannot "
			     "switch to tenant \"%s\"",
			     s->tenant, tenant);
		return false;
	}
	return true;
}

static void guard_verdict_unknown(struct session *s, const struct query_tenant *q)
{
	if (q->kind == QUERY_CONFLICT)
		guard_refuse(s, "the statement names more than one tenant in \"%s\"",
			     s->rt->cfg->rule.key);
	else
		guard_refuse(s,
			     "the statement sets \"%s\" to a value the router cannot read; give "
			     "the tenant as a constant",
			     s->rt->cfg->rule.key);
}

static struct flagged **flagged_find(struct guard *g, const char *name)
{
	struct flagged **pp;

	for (pp = &g->flagged; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->name, name) == 0)
			return pp;
	}
	return NULL;
}

/* Does this SQL switch the tenant? True to forward it. */
static bool guard_sql(struct session *s, const char *sql, size_t len, struct query_tenant *q)
{
	const char *key = s->rt->cfg->rule.key;
	const char *word = strrchr(key, '.');
	struct query_rule rule = {key, NULL};

	word = word ? word + 1 : key;
	q->kind = QUERY_OTHER;
	/*
	 * The cheap test first (a parse costs tens of microseconds). A switch
	 * needs the key's last word (however the name is quoted or spaced), and
	 * either "set" (SET, RESET, set_config) or a comment holding the key.
	 */
	if (!query_mentions(sql, len, word, strlen(word)) ||
	    (!query_mentions(sql, len, "set", 3) &&
	     !(memmem(sql, len, "/*", 2) && query_mentions(sql, len, key, strlen(key)))))
		return true;
	query_find_tenant(sql, len, &rule, q);
	switch (q->kind) {
	case QUERY_TENANT:
		return guard_allows(s, q->tenant, q->tenant_len);
	case QUERY_CONFLICT:
	case QUERY_UNKNOWN:
		guard_verdict_unknown(s, q);
		return false;
	default:
		return true;
	}
}

/* One whole client message (header included) of type Q, P or B: forward it? */
static bool guard_message(struct session *s, const uint8_t *m, size_t total)
{
	struct guard *g = &s->g;
	const uint8_t *body = m + 5;
	size_t blen = total - 5;
	struct query_tenant q;
	struct rd r;

	rd_init(&r, body, blen);
	if (m[0] == 'Q')
		return guard_sql(s, (const char *)body, strnlen((const char *)body, blen), &q);
	if (m[0] == 'P') {
		const char *name, *sql;
		size_t nl, ql;
		struct flagged **pp, *f;

		if (!rd_cstr(&r, &name, &nl) || !rd_cstr(&r, &sql, &ql))
			return true; /* the server will say what is wrong */
		if (g->flagged && (pp = flagged_find(g, name)) != NULL) {
			f = *pp;
			*pp = f->next;
			free(f);
		}
		if (!guard_sql(s, sql, ql, &q))
			return false;
		if (q.param == 0 || !(q.sources & QSRC_SET_CONFIG))
			return true;
		/* set_config(key, $n): the tenant comes with each Bind of this statement. */
		f = calloc(1, sizeof(*f) + nl + 1);
		if (f == NULL)
			return false;
		memcpy(f->name, name, nl + 1);
		f->param = q.param;
		if (rd_u16(&r, &f->ntypes)) {
			for (uint16_t i = 0; i < f->ntypes && i < ARRAY_SIZE(f->types); i++) {
				if (!rd_u32(&r, &f->types[i]))
					break;
			}
		}
		f->next = g->flagged;
		g->flagged = f;
		return true;
	}
	if (m[0] == 'B' && g->flagged) {
		const char *portal, *name;
		size_t pl, nl, vl;
		struct flagged **pp;
		struct xstmt st;
		char val[STARTUP_MAX_TENANT_LEN + 1];

		if (!rd_cstr(&r, &portal, &pl) || !rd_cstr(&r, &name, &nl) ||
		    (pp = flagged_find(g, name)) == NULL)
			return true;
		memset(&st, 0, sizeof(st));
		st.q.param = (*pp)->param;
		st.ntypes = (*pp)->ntypes;
		memcpy(st.types, (*pp)->types, sizeof(st.types));
		if (!bind_param_text(body, blen, &st, val, sizeof(val), &vl)) {
			guard_refuse(s,
				     "the value bound for \"%s\" cannot be read as a tenant; bind it "
				     "as text",
				     s->rt->cfg->rule.key);
			return false;
		}
		return guard_allows(s, val, vl);
	}
	return true;
}

/* Does this message need to be seen whole before it may go? */
static inline bool guard_wants(const struct guard *g, uint8_t type)
{
	return type == 'Q' || type == 'P' || (type == 'B' && g->flagged);
}

/*
 * A refused message was dropped: a Query is answered through a Sync in its
 * place; an extended-protocol message makes us drop up to the client's Sync.
 */
static bool guard_after_refusal(struct session *s, uint8_t type)
{
	static const uint8_t sync[5] = {'S', 0, 0, 0, 4};

	if (type != 'Q') {
		s->g.discard = true;
		return true;
	}
	if (!guard_send(s, sync, sizeof(sync)))
		return false;
	s->g.syncs++;
	return true;
}

/* Client bytes for the server, when the guard is on. Takes b. */
static void guard_client(struct session *s, struct block *b, size_t n)
{
	struct guard *g = &s->g;
	const uint8_t *p = (const uint8_t *)b->data;
	size_t i = 0, emit = 0;
	bool cut = false;

	while (i < n && !s->closed) {
		size_t take, start;
		uint8_t type;

		/* Inside a message: pass it, hold it, or drop it. */
		if (g->cleft > 0) {
			take = g->cleft < n - i ? g->cleft : n - i;
			if (g->hold.p) {
				if (!gbuf_add(&g->hold, p + i, take))
					goto oom;
			} else if (g->discard) {
				if (!guard_send(s, p + emit, i - emit))
					goto out;
				emit = i + take;
				cut = true;
			}
			g->cleft -= (uint32_t)take;
			i += take;
			if (g->cleft > 0 || g->hold.p == NULL)
				continue;
			/* A held message is whole now. */
			if (guard_message(s, g->hold.p, g->hold.len)) {
				if (!guard_send(s, g->hold.p, g->hold.len))
					goto out;
				guard_count(g, g->hold.p[0]);
			} else if (!guard_after_refusal(s, g->hold.p[0])) {
				goto out;
			}
			free(g->hold.p);
			memset(&g->hold, 0, sizeof(g->hold));
			emit = i;
			continue;
		}
		/* A header, perhaps split across reads: hold back the part we have. */
		start = i;
		take = 5u - g->chlen < n - i ? 5u - g->chlen : n - i;
		memcpy(g->chdr + g->chlen, p + i, take);
		g->chlen += (uint8_t)take;
		i += take;
		if (g->chlen < 5) {
			if (!guard_send(s, p + emit, start - emit))
				goto out;
			emit = n;
			cut = true;
			break;
		}
		g->chlen = 0;
		type = g->chdr[0];
		g->cleft = proto_get_u32(g->chdr + 1) - 4;
		if (proto_get_u32(g->chdr + 1) < 4) {
			/* Not the protocol: let the server say so, and stop looking. */
			g->on = false;
			break;
		}
		if (g->discard) {
			/* Dropping the rest of a refused batch, up to its Sync. */
			if (!guard_send(s, p + emit, start - emit))
				goto out;
			emit = i;
			cut = true;
			if (type == 'S') {
				g->discard = false;
				g->cforwarded = false;
				if (!guard_send(s, g->chdr, 5))
					goto out;
				guard_count(g, type);
			}
			continue;
		}
		if (g->cforwarded) {
			/* Part of this header went out before the guard began: just pass it. */
			g->cforwarded = false;
			guard_count(g, type);
			continue;
		}
		/* Bytes of a passed header held back from the last read go out first. */
		if (take < 5 && !guard_wants(g, type) && !guard_send(s, g->chdr, 5 - take))
			goto out;
		if (!guard_wants(g, type)) {
			guard_count(g, type);
			continue;
		}
		if (g->cleft <= n - i && take == 5) {
			/* Whole in this read: look at it in place. */
			if (guard_message(s, p + start, 5 + g->cleft)) {
				guard_count(g, type);
				continue;
			}
		} else if (g->cleft <= n - i) {
			/* Its header began in the last read: look at a copy. */
			struct gbuf m = {0};
			bool ok = gbuf_add(&m, g->chdr, 5) && gbuf_add(&m, p + i, g->cleft);

			if (!ok) {
				free(m.p);
				goto oom;
			}
			if (!guard_send(s, p + emit, start - emit))
				goto out;
			cut = true;
			ok = guard_message(s, m.p, m.len);
			if (ok && guard_send(s, m.p, m.len))
				guard_count(g, type);
			free(m.p);
			i += g->cleft;
			g->cleft = 0;
			emit = i;
			if (!ok && !guard_after_refusal(s, type))
				goto out;
			continue;
		} else {
			/* Longer than this read: hold it until it is whole. */
			if (!guard_send(s, p + emit, start - emit))
				goto out;
			cut = true;
			if (!gbuf_add(&g->hold, g->chdr, 5))
				goto oom;
			emit = i;
			continue;
		}
		/* Refused, and whole in this read: drop it. */
		if (!guard_send(s, p + emit, start - emit))
			goto out;
		cut = true;
		i += g->cleft;
		g->cleft = 0;
		emit = i;
		if (!guard_after_refusal(s, type))
			goto out;
	}
	if (s->closed)
		goto out;
	if (!cut) {
		forward(s, &s->sv, b, n);
		return;
	}
	if (guard_send(s, p + emit, n - emit))
		apply_pressure(s, &s->sv);
out:
	block_put(b);
	return;
oom:
	block_put(b);
	session_close(s);
}

static void guard_free(struct guard *g)
{
	struct refusal *r;
	struct flagged *f;

	while ((r = g->refusals) != NULL) {
		g->refusals = r->next;
		free(r);
	}
	while ((f = g->flagged) != NULL) {
		g->flagged = f->next;
		free(f);
	}
	free(g->hold.p);
	memset(&g->hold, 0, sizeof(g->hold));
}

static void route(struct session *s, const struct startup *st, size_t len)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct tenant t;

	set_state(s, CLIENT_ROUTING);
	stop_reading(&s->cl);
	if (rt->draining) {
		client_refuse(s, "57P01", "Connect again in a moment.",
			      "the router is shutting down");
		return;
	}
	if (s->over_limit) {
		client_refuse(s, "53300", "Close idle connections, or raise max_client_conn.",
			      "too many client connections (max_client_conn = %u)",
			      cfg->max_client_conn);
		return;
	}
	switch (startup_find_tenant(st, &cfg->rule, &t)) {
	case TENANT_FOUND:
		break;
	case TENANT_NONE:
		if (cfg->rule.sources & TENANT_SRC_QUERY) {
			local_start(s, st, len);
			return;
		}
		client_refuse(s, "08004",
			      "Put the tenant in the connection string, e.g. "
			      "options='-c app.tenant_id=<tenant>' (PGOPTIONS, or the JDBC/DBeaver "
			      "driver property \"options\").",
			      "no tenant in the connection (expected setting \"%s\")",
			      cfg->rule.key);
		return;
	case TENANT_CONFLICT:
		client_refuse(s, "08004", "Give the tenant once, in one place.",
			      "the connection names more than one tenant in \"%s\"", cfg->rule.key);
		return;
	case TENANT_TOO_LONG:
		client_refuse(s, "08004", "Tenants are at most 255 bytes.",
			      "the tenant in \"%s\" is too long", cfg->rule.key);
		return;
	}
	connect_tenant(s, st, &t, len);
}

static void handle_cancel(struct session *s, const struct startup *st, size_t len)
{
	union cancel_addr addr;
	uint8_t pkt[12 + PROTO_MAX_CANCEL_KEY];
	size_t plen;

	/* No answer either way, as PostgreSQL does: the client just sees the close. */
	if (cancel_lookup_packet(s->rt->cancels, st->cancel_pid, st->cancel_key,
				 st->cancel_key_len, s->login->in, len, &addr, pkt, &plen)) {
		slog(s, LOG_DEBUG, "forwarding cancel request pid=%u", st->cancel_pid);
		cancel_forward(s->rt->loop, &addr, pkt, plen);
	} else {
		slog(s, LOG_DEBUG, "cancel request for an unknown key pid=%u", st->cancel_pid);
	}
	session_close(s);
}

static const uint8_t answer_no[1] = {'N'};
static const uint8_t answer_yes[1] = {'S'};

/* Starts TLS on the client leg, as the TLS server. */
static bool client_tls_start(struct session *s)
{
	s->cl.tls = tls_new(s->rt->cfg->client_tls_ctx, true, NULL, false);
	if (s->cl.tls == NULL) {
		client_refuse(s, "08006", "Retry.", "out of memory for TLS");
		return false;
	}
	set_state(s, CLIENT_TLS);
	return true;
}

static void process_startup(struct session *s)
{
	struct login *L = s->login;
	const struct config *cfg = s->rt->cfg;
	struct startup st;
	const char *why = NULL;
	size_t total;
	uint32_t code;

	switch (proto_frame_startup(L->in, L->inlen, &total, &code)) {
	case PROTO_NEED_MORE:
		return;
	case PROTO_BAD:
		client_refuse(s, "08P01", "Connect with a PostgreSQL client (protocol 3.0).",
			      "invalid startup packet length");
		return;
	case PROTO_OK:
		break;
	}
	if (L->inlen < total) {
		if (L->overflow)
			client_refuse(s, "08P01", "Connect with a PostgreSQL client.",
				      "startup packet too long");
		return;
	}
	if (startup_parse(L->in, total, &st, &why) != PROTO_OK) {
		client_refuse(s, "08P01", "Connect with a PostgreSQL client (protocol 3.0).",
			      "invalid startup packet: %s", why ? why : "malformed");
		return;
	}
	if (L->overflow) {
		client_refuse(s, "08P01", "Wait for the server's answer before sending more.",
			      "too much data sent with the startup packet");
		return;
	}
	switch (st.kind) {
	case STARTUP_SSL:
	case STARTUP_GSSENC:
		/* Plaintext sent ahead of the answer could not be encrypted: refuse it. */
		if (L->inlen > total) {
			client_refuse(s, "08P01", "Wait for the answer to SSLRequest/GSSENCRequest.",
				      "received unencrypted data after an encryption request");
			return;
		}
		if (++L->nego > 2 || s->cl.tls) {
			client_refuse(s, "08P01", "Send one SSLRequest or GSSENCRequest.",
				      "unexpected encryption request");
			return;
		}
		L->inlen = 0;
		if (st.kind == STARTUP_SSL && cfg->client_tls_ctx) {
			if (side_send_copy(s, &s->cl, answer_yes, 1) < 0)
				session_close(s);
			else
				client_tls_start(s);
			return;
		}
		/* Not offered: 'N', then the client goes on in plaintext (or gives up). */
		if (side_send_copy(s, &s->cl, answer_no, 1) < 0)
			session_close(s);
		return;
	case STARTUP_CANCEL:
		handle_cancel(s, &st, total);
		return;
	case STARTUP_V3:
		if (s->cl.tls == NULL && cfg->client_tls_mode >= TLS_CLIENT_REQUIRE) {
			client_refuse(s, "28000",
				      "Connect with TLS (sslmode=require or stronger).",
				      "TLS is required (client_tls_mode = %s)",
				      cfg->client_tls_mode == TLS_CLIENT_REQUIRE ? "require"
										  : "verify-ca");
			return;
		}
		route(s, &st, total);
		return;
	}
}

static void read_end(struct session *s, struct side *sd, ssize_t err)
{
	if (err != UV_EOF)
		slog(s, LOG_DEBUG, "%s read error: %s", sd == &s->cl ? "client" : "server",
		     uv_strerror((int)err));
	switch (s->state) {
	case CLIENT_AUTH_RELAY:
	case CLIENT_SPLICING:
		/* Whatever one side sent before leaving still goes to the other. */
		begin_drain(s, other(s, sd));
		break;
	case CLIENT_CONNECTING:
		if (sd == &s->sv) {
			client_refuse(s, "08006", "Retry.",
				      "cluster \"%s\" coordinator closed the connection during "
				      "TLS setup",
				      s->cluster);
			break;
		}
		session_close(s);
		break;
	case CLIENT_SERVER_LOGIN:
		if (sd == &s->sv) {
			client_refuse(s, "08006", "Retry; check the cluster's log.",
				      "cluster \"%s\" closed the connection during login",
				      s->cluster);
			break;
		}
		session_close(s);
		break;
	case CLIENT_CLOSING:
		break;
	default:
		session_close(s);
		break;
	}
}

/* Plaintext from a leg (decrypted already, if it is TLS). Takes b. */
static void deliver(struct session *s, struct side *sd, struct block *b, size_t n)
{
	switch (s->state) {
	case CLIENT_STARTUP: {
		struct login *L = s->login;
		size_t room = PROTO_MAX_STARTUP_LEN - L->inlen;
		size_t take = n < room ? n : room;

		/* Most startup packets are a few hundred bytes: grow only as needed. */
		if (L->inlen + take > L->incap) {
			size_t cap = L->incap ? L->incap : 512;
			uint8_t *in;

			while (cap < L->inlen + take)
				cap *= 2;
			if (cap > PROTO_MAX_STARTUP_LEN)
				cap = PROTO_MAX_STARTUP_LEN;
			in = realloc(L->in, cap);
			if (in == NULL) {
				block_put(b);
				session_close(s);
				break;
			}
			L->in = in;
			L->incap = cap;
		}
		memcpy(L->in + L->inlen, b->data, take);
		L->inlen += take;
		L->overflow |= take < n;
		block_put(b);
		process_startup(s);
		break;
	}
	case CLIENT_CONNECTING:
		if (sd == &s->sv && s->login->sv_phase == SV_SSL_ANSWER)
			server_ssl_answer(s, b, n);
		else
			block_put(b);
		break;
	case CLIENT_LOCAL_AUTH:
	case CLIENT_NO_TENANT:
		if (sd == &s->cl)
			local_in(s, b, n);
		else
			block_put(b);
		break;
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		if (sd == &s->sv) {
			bool ok = relay_auth(s, (const uint8_t *)b->data, n);

			block_put(b);
			if (!ok) {
				slog(s, LOG_WARN, "server sent a malformed message during login");
				session_close(s);
				return;
			}
			if (s->login && s->login->ready &&
			    (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SERVER_LOGIN)) {
				bool local = s->state == CLIENT_SERVER_LOGIN;

				set_state(s, CLIENT_SPLICING);
				uv_timer_stop(&s->timer);
				slog(s, LOG_DEBUG, "login complete");
				login_free(s->login);
				s->login = NULL;
				if (local)
					start_reading(s, &s->cl);
			}
		} else if (s->state == CLIENT_SERVER_LOGIN) {
			bool ok = gbuf_add(&s->login->lc->held, b->data, n);

			block_put(b);
			if (!ok)
				session_close(s);
		} else {
			if (s->login->sasl_pending && s->sv.tls && s->cl.tls &&
			    !check_sasl_initial(s, (const uint8_t *)b->data, n)) {
				block_put(b);
				return;
			}
			guard_sent(s, (const uint8_t *)b->data, n);
			forward(s, &s->sv, b, n);
		}
		break;
	case CLIENT_SPLICING:
		if (!s->g.on)
			forward(s, other(s, sd), b, n);
		else if (sd == &s->cl)
			guard_client(s, b, n);
		else
			guard_server(s, b, n);
		break;
	default:
		block_put(b);
		break;
	}
}

/* A TLS handshake finished on sd. */
static void tls_up(struct session *s, struct side *sd)
{
	if (sd == &s->sv) {
		slog(s, LOG_DEBUG, "server TLS established");
		send_startup(s);
		return;
	}
	set_state(s, CLIENT_STARTUP);
	s->login->inlen = 0;
	/* PostgreSQL 17 insists on ALPN for direct TLS; so do we. */
	if (s->login->direct_tls && !tls_alpn_is_postgresql(s->cl.tls))
		client_refuse(s, "08P01", "Use a client that negotiates ALPN \"postgresql\".",
			      "direct TLS connection without ALPN");
}

/* Ciphertext from a TLS leg: handshake, then decrypt and deliver. Takes b. */
static void tls_in(struct session *s, struct side *sd, struct block *b, size_t n)
{
	bool ok = tls_feed(sd->tls, b->data, n);

	block_put(b);
	if (!ok) {
		session_close(s);
		return;
	}
	if (!sd->tls_ready) {
		int rc = tls_handshake(sd->tls);

		if (flush_tls(s, sd) < 0) {
			session_close(s);
			return;
		}
		if (rc == TLS_AGAIN)
			return;
		if (rc != 1) {
			if (sd == &s->sv) {
				client_refuse(s, "08006",
					      "Check the coordinator's certificate and TLS settings "
					      "against server_tls_* on the router.",
					      "TLS handshake with cluster \"%s\" coordinator "
					      "failed: %s",
					      s->cluster, tls_error(sd->tls));
			} else {
				slog(s, LOG_INFO, "client TLS handshake failed: %s",
				     tls_error(sd->tls));
				/* The alert, if any, is queued: let it go out. */
				begin_drain(s, &s->cl);
			}
			return;
		}
		sd->tls_ready = true;
		tls_up(s, sd);
	}
	while (!s->closed && s->state != CLIENT_CLOSING) {
		struct block *pb = block_get();
		int r;

		if (pb == NULL) {
			session_close(s);
			return;
		}
		r = tls_read(sd->tls, pb->data, SPLICE_BLOCK_SIZE);
		if (r > 0) {
			deliver(s, sd, pb, (size_t)r);
			continue;
		}
		block_put(pb);
		if (r == TLS_EOF) {
			read_end(s, sd, UV_EOF);
			return;
		}
		if (r == TLS_ERROR) {
			slog(s, LOG_INFO, "%s TLS error: %s", sd == &s->cl ? "client" : "server",
			     tls_error(sd->tls));
			read_end(s, sd, UV_EPROTO);
			return;
		}
		break;
	}
	/* Reading may have produced records to send (alerts, session tickets). */
	if (!s->closed && flush_tls(s, sd) < 0)
		session_close(s);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct session *s = stream->data;
	struct side *sd = stream == (uv_stream_t *)&s->cl.tcp ? &s->cl : &s->sv;
	struct block *b = buf->base ? block_of(buf) : NULL;

	if (nread <= 0) {
		if (b)
			block_put(b);
		if (nread == UV_ENOBUFS) {
			slog(s, LOG_ERROR, "out of memory for relay buffers, closing");
			session_close(s);
		} else if (nread < 0) {
			sd->reading = false;
			read_end(s, sd, nread);
		}
		return;
	}
	if (sd->tls) {
		tls_in(s, sd, b, (size_t)nread);
		return;
	}
	/* A TLS ClientHello instead of a startup packet: PostgreSQL 17 direct TLS. */
	if (sd == &s->cl && s->state == CLIENT_STARTUP && s->login->inlen == 0 &&
	    (uint8_t)b->data[0] == TLS_RECORD_TYPE_HANDSHAKE && s->rt->cfg->client_tls_ctx) {
		s->login->direct_tls = true;
		if (client_tls_start(s))
			tls_in(s, sd, b, (size_t)nread);
		else
			block_put(b);
		return;
	}
	deliver(s, sd, b, (size_t)nread);
}

void client_accept(struct router *rt, uv_stream_t *listener)
{
	struct session *s = calloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	int rc;

	if (s == NULL) {
		log_error("out of memory accepting a connection");
		return;
	}
	s->rt = rt;
	s->id = ++rt->next_session_id;
	uv_tcp_init(rt->loop, &s->cl.tcp);
	s->cl.inited = true;
	s->cl.tcp.data = s;
	uv_timer_init(rt->loop, &s->timer);
	s->timer.data = s;
	s->open_handles = 2;
	s->state = CLIENT_STARTUP;
	s->started = uv_now(rt->loop);
	snprintf(s->peer, sizeof(s->peer), "?");
	/* Link first: the close path always unlinks. */
	s->next = rt->sessions;
	if (rt->sessions)
		rt->sessions->prev = s;
	rt->sessions = s;
	rt->nsessions++;
	atomic_fetch_add(rt->live, 1);
	rc = uv_accept(listener, (uv_stream_t *)&s->cl.tcp);
	if (rc < 0) {
		log_warn("accept failed: %s", uv_strerror(rc));
		session_close(s);
		return;
	}
	if (uv_tcp_getpeername(&s->cl.tcp, (struct sockaddr *)&ss, &len) == 0) {
		char ip[INET6_ADDRSTRLEN] = "?";
		unsigned port;

		if (ss.ss_family == AF_INET6) {
			uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		} else {
			uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
			port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		}
		snprintf(s->peer, sizeof(s->peer), "%s:%u", ip, port);
	}
	uv_tcp_nodelay(&s->cl.tcp, 1);
	s->over_limit = atomic_load(rt->live) > rt->cfg->max_client_conn;
	s->login = calloc(1, sizeof(*s->login));
	if (s->login == NULL) {
		log_error("out of memory for a new session");
		session_close(s);
		return;
	}
	s->login_deadline = s->started + rt->cfg->client_login_timeout_ms;
	/* Decided once: framing must start with the session's first message. */
	s->g.on = rt->cfg->guard != GUARD_OFF;
	s->g.strict = rt->cfg->guard == GUARD_STRICT;
	arm_timer(s, rt->cfg->client_login_timeout_ms);
	start_reading(s, &s->cl);
}

void client_close_all(struct router *rt)
{
	for (struct session *s = rt->sessions; s; s = s->next)
		session_close(s);
}
