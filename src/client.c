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
 * max_client_conn and the open file budget (main.c) are judged at accept,
 * counting every connection from then on; one over a limit is refused with
 * 53300 at once or right after its startup packet (admit()), never kept
 * until the login timeout.
 *
 * Until ReadyForQuery we keep a struct login on the side (the startup
 * packet, the chosen server, a framer over the server's messages); once the
 * session splices it is freed, so an idle session holds no buffer.
 *
 * While relaying authentication we pass the server's messages on whole:
 * BackendKeyData goes to the cancel map, an ErrorResponse is logged,
 * SCRAM-SHA-256-PLUS is removed from AuthenticationSASL (channel binding
 * cannot work through a router that terminates TLS), and ReadyForQuery ends
 * the login. After that, bytes in, bytes out. A server that breaks the
 * protocol (08P01) or the connection (08006) before ReadyForQuery gets the
 * client a FATAL ErrorResponse saying so: we relay whole messages only, so
 * there is always a message boundary to put it at.
 *
 * Either leg may be TLS (struct tls over memory BIOs). All bytes from a leg
 * go through read_cb -> tls_in -> deliver, and all bytes to a leg through
 * side_send, so the state machine does not care which legs are encrypted.
 *
 * What we never do: send a tenant to a second cluster. A session's cluster
 * is chosen once, before connecting, and nothing afterwards re-routes it.
 *
 * Two concerns live beside this file and share its types (session.h):
 * client_local.c, for clients that name the tenant only in SQL (the router
 * logs them in itself, then logs in to the server for them), and
 * client_guard.c, the stickiness guard on spliced sessions.
 */
#include "client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <uv.h>

#include "cancel.h"
#include "config.h"
#include "directory.h"
#include "dirsync.h"
#include "health.h"
#include "log.h"
#include "peer.h"
#include "proto.h"
#include "route.h"
#include "router.h"
#include "splice.h"
#include "startup.h"
#include "tls.h"

#include "session.h"

static const char *const state_names[] = {"startup",	  "tls",	"routing",
					  "connecting",	  "auth_relay", "splicing",
					  "closing",	  "local_auth", "no_tenant",
					  "server_login"};

const char *client_state_name(enum client_state s)
{
	return (size_t)s < ARRAY_SIZE(state_names) ? state_names[s] : "?";
}


void client_log(struct session *s, enum log_level level, const char *fmt, ...)
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

void client_set_state(struct session *s, enum client_state next)
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
		client_log(s, LOG_TRACE, "state %s -> %s", client_state_name(s->state),
		     client_state_name(next));
	stats_session_state(s->stc, s->state, next);
	/* Both ways in (relayed and the router's own login) end here at ReadyForQuery. */
	if (next == CLIENT_SPLICING)
		stats_observe(STATS_LOGIN, uv_hrtime() - s->t0_ns);
	s->state = next;
}


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
	stats_session_end(s->stc, s->state);
	if (s->over_limit)
		atomic_fetch_sub(&rt->limits->refusing, 1);
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
void client_close(struct session *s)
{
	if (s->closed)
		return;
	if (s->state != CLIENT_CLOSING)
		client_set_state(s, CLIENT_CLOSING);
	s->closed = true;
	cancel_unregister(s->rt->cancels, &s->ce);
	client_log(s, LOG_DEBUG, "closed age=%llums",
	     (unsigned long long)(uv_now(s->rt->loop) - s->started));
	/* Its callback still runs (UV_EAI_CANCELED) and frees the session if last. */
	if (s->login && s->login->resolving)
		uv_cancel((uv_req_t *)&s->login->gai);
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
	client_close(req->data);
}

void client_stop_reading(struct side *sd)
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
void client_drain(struct session *s, struct side *dst)
{
	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	client_set_state(s, CLIENT_CLOSING);
	client_stop_reading(&s->cl);
	client_stop_reading(&s->sv);
	arm_timer(s, CLOSE_FLUSH_MS);
	s->shut.data = s;
	if (!dst->inited || uv_shutdown(&s->shut, (uv_stream_t *)&dst->tcp, shutdown_cb) < 0)
		client_close(s);
}

static struct side *other(struct session *s, struct side *sd)
{
	return sd == &s->cl ? &s->sv : &s->cl;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void write_cb(uv_write_t *req, int status)
{
	struct session *s = req->data;
	struct side *dst = req->handle == (uv_stream_t *)&s->cl.tcp ? &s->cl : &s->sv;
	struct side *src = other(s, dst);

	block_put(container_of(req, struct block, req));
	if (status == UV_ECANCELED || s->closed)
		return;
	if (status < 0) {
		client_send_failed(s, dst, status);
		return;
	}
	if (src->paused && (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SPLICING) &&
	    uv_stream_get_write_queue_size((uv_stream_t *)&dst->tcp) < SPLICE_LOW_WATER) {
		src->paused = false;
		client_start_reading(s, src);
	}
}

/* Moves the ciphertext TLS produced for sd onto its socket. */
/* Bytes written to a leg, for metrics. */
static void count_sent(struct session *s, struct side *sd, size_t n)
{
	stats_bytes(sd == &s->cl ? STATS_TO_CLIENT : STATS_TO_SERVER, n);
}

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
		count_sent(s, sd, n);
		rc = splice_send((uv_stream_t *)&sd->tcp, b, 0, n, s, write_cb);
		if (rc < 0)
			return rc;
	}
}

/* Sends n bytes of b to sd (encrypting on a TLS leg); takes b. */
static int side_send(struct session *s, struct side *sd, struct block *b, size_t n)
{
	bool ok;

	if (sd->tls == NULL) {
		count_sent(s, sd, n);
		return splice_send((uv_stream_t *)&sd->tcp, b, 0, n, s, write_cb);
	}
	ok = tls_write(sd->tls, b->data, n);
	block_put(b);
	return ok ? flush_tls(s, sd) : UV_EPROTO;
}

int client_send_copy(struct session *s, struct side *sd, const void *p, size_t n)
{
	if (sd->tls == NULL) {
		count_sent(s, sd, n);
		return splice_send_copy((uv_stream_t *)&sd->tcp, p, n, s, write_cb);
	}
	return tls_write(sd->tls, p, n) ? flush_tls(s, sd) : UV_EPROTO;
}

/* After queueing for dst: pause its source while dst has too much unsent. */
void client_apply_pressure(struct session *s, struct side *dst)
{
	struct side *src = other(s, dst);

	if (uv_stream_get_write_queue_size((uv_stream_t *)&dst->tcp) > SPLICE_HIGH_WATER &&
	    !src->paused && src->reading) {
		src->paused = true;
		client_stop_reading(src);
	}
}

void client_send_failed(struct session *s, struct side *dst, int rc)
{
	client_log(s, LOG_DEBUG, "write to %s failed: %s", dst == &s->cl ? "client" : "server",
	     uv_strerror(rc));
	/* The server is gone: still hand the client what it already sent. */
	if (dst == &s->sv)
		client_drain(s, &s->cl);
	else
		client_close(s);
}

/* Passes b (n bytes) to dst, pausing the source if dst has too much unsent. */
void client_forward(struct session *s, struct side *dst, struct block *b, size_t n)
{
	int rc = side_send(s, dst, b, n);

	if (rc < 0)
		client_send_failed(s, dst, rc);
	else
		client_apply_pressure(s, dst);
}

/*
 * True when an ErrorResponse can reach the client as a whole message: before
 * splicing we only ever send it whole messages, but mid-handshake there is
 * no channel to send one on.
 */
/*
 * A spliced session with nothing in flight, as the guard's framer sees it:
 * every Query, Sync and FunctionCall answered by its ReadyForQuery, and no
 * message half through in either direction. Ending it there cannot leave a
 * client unsure whether its last statement committed. Without the guard
 * nothing frames the splice: never idle.
 */
static bool spliced_idle(const struct session *s)
{
	const struct gframe *f = &s->g.f;

	return s->state == CLIENT_SPLICING && s->g.on && !f->blind && !f->sblind &&
	       f->syncs == f->zs && f->chlen == 0 && f->cleft == 0 && f->shlen == 0 &&
	       f->sleft == 0 && !f->ehold && f->errors == NULL;
}

static bool client_at_boundary(struct session *s)
{
	if (s->cl.tls && !s->cl.tls_ready)
		return false;
	return spliced_idle(s) || s->state == CLIENT_STARTUP || s->state == CLIENT_TLS ||
	       s->state == CLIENT_ROUTING || s->state == CLIENT_CONNECTING ||
	       s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_LOCAL_AUTH ||
	       s->state == CLIENT_NO_TENANT || s->state == CLIENT_SERVER_LOGIN;
}

/*
 * The refusal of a connection we cannot keep even for a moment (see
 * client_accept). The socket is new, so its empty send buffer takes the
 * whole ErrorResponse at once; a partial write cannot happen with a few
 * hundred bytes, and if the write fails the client sees the close alone.
 * Then FIN, and what the client sent already is read away: closing over
 * unread input sends a reset, which can overtake our message. The
 * descriptor is closed now, not after a flush.
 */
static void refuse_at_once(struct session *s, struct block *b, size_t len)
{
	uv_buf_t buf = uv_buf_init(b->data, (unsigned)len);
	uv_os_fd_t fd;
	char sink[512];

	if (uv_try_write((uv_stream_t *)&s->cl.tcp, &buf, 1) == (int)len &&
	    uv_fileno((uv_handle_t *)&s->cl.tcp, &fd) == 0) {
		(void)shutdown(fd, SHUT_WR);
		for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
			;
	}
	block_put(b);
	client_close(s);
}

/*
 * The one way to refuse a client: a FATAL ErrorResponse naming the router,
 * with a hint, then close once it is flushed.
 */
const char *client_vformat(char *msg, size_t cap, const char *fmt, va_list ap)
{
	int n = snprintf(msg, cap, "tenant-router: ");

	vsnprintf(msg + n, cap - (size_t)n, fmt, ap);
	return msg + n;
}

void client_refuse(struct session *s, const char *sqlstate, const char *hint, const char *fmt, ...)
{
	char msg[768];
	const char *text;
	struct block *b;
	struct wbuf w;
	va_list ap;

	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	stats_refusal(sqlstate, s->cluster, s->tenant);
	va_start(ap, fmt);
	text = client_vformat(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* Those refused at once come in floods: client_accept logs them, rate-limited. */
	if (!s->refuse_now)
		client_log(s, LOG_INFO, "refused sqlstate=%s reason=\"%s\"", sqlstate, text);
	if (!client_at_boundary(s)) {
		client_close(s);
		return;
	}
	/* Messages we gathered for the client go before the error. */
	if (s->login && s->login->out && !client_out_flush(s))
		return;
	if (s->sv.inited && !uv_is_closing((uv_handle_t *)&s->sv.tcp))
		uv_close((uv_handle_t *)&s->sv.tcp, close_cb);
	s->sv.inited = false;
	s->sv.reading = false;
	b = block_get();
	if (b == NULL) {
		client_close(s);
		return;
	}
	wb_init(&w, b->data, SPLICE_BLOCK_SIZE);
	proto_error_response(&w, "FATAL", sqlstate, msg, NULL, hint);
	TR_ASSERT(!w.failed);
	if (s->refuse_now) {
		refuse_at_once(s, b, w.len);
		return;
	}
	if (side_send(s, &s->cl, b, w.len) < 0) {
		client_close(s);
		return;
	}
	client_drain(s, &s->cl);
}

/* 53300 for a session accepted over max_client_conn or the open file limit. */
static void refuse_over_limit(struct session *s)
{
	struct limits *lim = s->rt->limits;

	if (s->over_limit == OVER_FDS)
		client_refuse(s, "53300",
			      "Raise the router's open file limit (ulimit -n, or LimitNOFILE= in "
			      "its systemd unit), or lower max_client_conn.",
			      "too many client connections: the open file limit (%zu) fits %zu "
			      "sessions",
			      atomic_load(&lim->nofile), atomic_load(&lim->fd_sessions));
	else
		client_refuse(s, "53300", "Close idle connections, or raise max_client_conn.",
			      "too many client connections (max_client_conn = %u)",
			      s->rt->cfg->max_client_conn);
}

static void timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	const struct config *cfg = s->rt->cfg;

	switch (s->state) {
	case CLIENT_STARTUP:
	case CLIENT_TLS:
	case CLIENT_ROUTING:
		if (s->over_limit) {
			refuse_over_limit(s);
			break;
		}
		if (s->login && s->login->resolving) {
			client_refuse(s, "08006", "Check name resolution on the router's host.",
				      "route \"%s\": resolving %s took longer than the login timeout",
				      s->route, s->login->target.host);
			break;
		}
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
		client_close(s);
		break;
	}
}

/* Sends what client_out_put() gathered to the client; false if the session is closing. */
bool client_out_flush(struct session *s)
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
		client_send_failed(s, &s->cl, rc);
		return false;
	}
	client_apply_pressure(s, &s->cl);
	return true;
}

/*
 * Gathers bytes for the client. During login a server sends many small
 * messages in one segment; one write for all of them, not one per message,
 * halves the router's syscalls per connection and wakes the client once.
 */
bool client_out_put(struct session *s, const void *p, size_t n)
{
	struct login *L = s->login;
	const uint8_t *src = p;

	while (n > 0) {
		size_t c;

		if (L->out == NULL) {
			L->out = block_get();
			L->outlen = 0;
			if (L->out == NULL) {
				client_close(s);
				return false;
			}
		}
		c = SPLICE_BLOCK_SIZE - L->outlen < n ? SPLICE_BLOCK_SIZE - L->outlen : n;
		memcpy(L->out->data + L->outlen, src, c);
		L->outlen += c;
		src += c;
		n -= c;
		if (L->outlen == SPLICE_BLOCK_SIZE && !client_out_flush(s))
			return false;
	}
	return true;
}

/* Queues one whole message (type, body) for the client. */
bool client_send_msg(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	uint8_t hdr[5];

	proto_msg_header(hdr, type, len);
	return client_out_put(s, hdr, sizeof(hdr)) && client_out_put(s, body, len);
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
		return local_server_message(s, type, body, len);
	switch (type) {
	case 'R':
		if (len >= 4 && proto_get_u32(body) == 10)
			L->sasl_pending = true;
		n = len < sizeof(sasl) ? strip_scram_plus(body, len, sasl, sizeof(sasl)) : 0;
		if (n > 0) {
			client_log(s, LOG_DEBUG, "removed SCRAM-SHA-256-PLUS from the server's mechanisms");
			return client_send_msg(s, type, sasl, n);
		}
		break;
	case 'K':
		/* BackendKeyData: pid, then a 4-byte (3.0) to 256-byte (3.2) secret. */
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			break;
		rc = cancel_register(s->rt->cancels, &s->ce, proto_get_u32(body), body + 4,
				     len - 4, (const struct sockaddr *)&L->target.addr);
		if (rc < 0)
			client_log(s, LOG_WARN, "could not remember cancel key: %s", uv_strerror(rc));
		break;
	case 'E':
		L->server_err = true;
		if (proto_parse_error(body, len, &f) == PROTO_OK)
			client_log(s, LOG_INFO, "server refused login sqlstate=%s message=\"%s\"",
			     f.sqlstate ? f.sqlstate : "?", f.message ? f.message : "");
		else
			client_log(s, LOG_INFO, "server refused login");
		break;
	case 'Z':
		L->ready = true;
		break;
	default:
		break;
	}
	return client_send_msg(s, type, body, len);
}

/* A message type for a log line or an error message: 'R', or \x01. */
static const char *type_text(uint8_t type, char *buf, size_t cap)
{
	if (type > 0x20 && type < 0x7f)
		snprintf(buf, cap, "'%c'", type);
	else
		snprintf(buf, cap, "\\x%02x", type);
	return buf;
}

/*
 * Whether a server may send this message before its first ReadyForQuery
 * (protocol "Start-up"): authentication requests, BackendKeyData,
 * ParameterStatus, NegotiateProtocolVersion, notices and errors. After it,
 * on the tenant-source-query path, come the answers to our replay.
 */
static bool is_login_message(const struct login *L, uint8_t type)
{
	if (L->lc && L->lc->server_ready)
		return true;
	return type != '\0' && strchr("RKSvNEZ", type) != NULL;
}

/*
 * Judges the header of a server message during login, before any of its
 * body is awaited or buffered. False, with what is wrong in why, for a
 * length that breaks the protocol or our bound, or a type not allowed yet.
 */
static bool login_header_ok(const struct login *L, char *why, size_t cap)
{
	uint32_t mlen = proto_get_u32(L->hdr + 1);
	uint8_t type;
	size_t total;
	char tb[8];

	type_text(L->hdr[0], tb, sizeof(tb));
	if (proto_frame_msg(L->hdr, sizeof(L->hdr), AUTH_MSG_MAX, &type, &total) == PROTO_OK) {
		if (is_login_message(L, type))
			return true;
		snprintf(why, cap, "a message of unknown type %s before ReadyForQuery", tb);
	} else if (mlen < 4 || mlen > INT32_MAX) {
		snprintf(why, cap, "a message (type %s) with the invalid length %u", tb, mlen);
	} else {
		snprintf(why, cap, "a message (type %s) of %u bytes, over the %u-byte limit", tb,
			 mlen, AUTH_MSG_MAX);
	}
	return false;
}

/*
 * Frames server bytes during the auth relay and passes each whole message
 * on. Bytes after ReadyForQuery go on unparsed. A message reaches the client
 * only once its last byte has come, so whatever breaks, the client has been
 * sent whole messages only and an ErrorResponse can follow them. Returns
 * false when the server broke the protocol, with what it did in why.
 */
static bool relay_auth_msgs(struct session *s, const uint8_t *p, size_t n, char *why, size_t cap)
{
	struct login *L = s->login;

	for (;;) {
		size_t take;

		if (L->hlen < 5) {
			if (n == 0)
				break;
			take = 5 - L->hlen < n ? 5 - L->hlen : n;
			memcpy(L->hdr + L->hlen, p, take);
			L->hlen += take;
			p += take;
			n -= take;
			if (L->hlen < 5)
				break;
			if (!login_header_ok(L, why, cap))
				return false;
			/* The length counts itself, not the type byte. */
			L->mlen = proto_get_u32(L->hdr + 1) - 4;
			L->blen = 0;
			if (L->mlen > L->msgcap) {
				uint8_t *m = realloc(L->msg, L->mlen);

				if (m == NULL) {
					client_refuse(s, "53200", "Retry in a moment.",
						      "out of memory for a %zu-byte message from "
						      "cluster \"%s\"",
						      L->mlen, s->cluster);
					return true; /* refused already */
				}
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
			/* What follows the login's ReadyForQuery answers pipelined messages. */
			if (s->g.on)
				guard_server_bytes(s, p, n);
			else
				client_out_put(s, p, n);
			return true;
		}
	}
	return true;
}

static bool relay_auth(struct session *s, const uint8_t *p, size_t n, char *why, size_t cap)
{
	bool ok = relay_auth_msgs(s, p, n, why, cap);

	if (s->login)
		client_out_flush(s);
	return ok;
}

/*
 * The server failed while logging in: it broke the protocol (08P01) or the
 * connection (08006). The client hears why, naming the cluster and the host,
 * unless the server's own ErrorResponse already told it: that one is the
 * reason, and PostgreSQL closes right after sending it.
 */
static void server_login_lost(struct session *s, const char *sqlstate, const char *what)
{
	struct login *L = s->login;

	if (L->server_err) {
		client_drain(s, &s->cl);
		return;
	}
	client_log(s, LOG_WARN, "server %s:%u failed during login: %s", L->target.host,
		   L->target.port, what);
	if (strcmp(sqlstate, "08P01") == 0)
		client_refuse(s, sqlstate,
			      "The server at that address does not speak the PostgreSQL "
			      "protocol as expected: check the cluster's hosts in the "
			      "router's configuration, and the server's log.",
			      "cluster \"%s\" coordinator %s:%u broke the protocol during "
			      "login: it sent %s",
			      s->cluster, L->target.host, L->target.port, what);
	else
		client_refuse(s, sqlstate,
			      "The server ended the login without saying why (a crash, a "
			      "restart, a network failure): check its log, then retry.",
			      "cluster \"%s\" coordinator %s:%u %s during login", s->cluster,
			      L->target.host, L->target.port, what);
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

void client_start_reading(struct session *s, struct side *sd)
{
	int rc;

	if (sd->reading || s->closed)
		return;
	rc = uv_read_start((uv_stream_t *)&sd->tcp, splice_alloc_cb, read_cb);
	if (rc < 0) {
		client_log(s, LOG_WARN, "read_start failed: %s", uv_strerror(rc));
		client_close(s);
		return;
	}
	sd->reading = true;
}

/* The server connection is ready (TCP, and TLS if any): log in. */
static void send_startup(struct session *s)
{
	struct login *L = s->login;
	int rc = client_send_copy(s, &s->sv, L->pkt, L->pktlen);

	/* A client may pipeline its first messages behind the startup packet. */
	if (rc == 0 && L->inlen > L->extra_off) {
		/* The guard sees them as it sees everything the client sends later. */
		if (s->g.on)
			guard_client_bytes(s, L->in + L->extra_off, L->inlen - L->extra_off);
		else
			rc = client_send_copy(s, &s->sv, L->in + L->extra_off,
					      L->inlen - L->extra_off);
		if (s->closed)
			return;
	}
	if (rc < 0) {
		client_refuse(s, "08006", "Retry.",
			      "could not send the startup packet to cluster \"%s\": %s",
			      s->cluster, uv_strerror(rc));
		return;
	}
	if (L->lc) {
		/* We log in for the client; it waits for the answer to its statement. */
		client_set_state(s, CLIENT_SERVER_LOGIN);
		arm_timer(s, login_left(s));
		client_start_reading(s, &s->sv);
		return;
	}
	client_set_state(s, CLIENT_AUTH_RELAY);
	arm_timer(s, login_left(s));
	client_start_reading(s, &s->cl);
	client_start_reading(s, &s->sv);
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
	if (client_send_copy(s, &s->sv, ssl_request, sizeof(ssl_request)) < 0) {
		client_refuse(s, "08006", "Retry.", "could not send SSLRequest to cluster \"%s\"",
			      s->cluster);
		return;
	}
	client_start_reading(s, &s->sv);
}

/* The server's one-byte answer to our SSLRequest. */
static void server_ssl_answer(struct session *s, struct block *b, size_t n)
{
	struct login *L = s->login;
	uint8_t answer = (uint8_t)b->data[0];

	block_put(b);
	/*
	 * An ErrorResponse instead of the answer: the server cannot take us now
	 * (a failed fork, say). Its text comes before any TLS and we do not pass
	 * it on, as libpq no longer shows it (CVE-2024-10977).
	 */
	if (answer == 'E') {
		client_refuse(s, "08006",
			      "The server could not accept the connection: check its log, then "
			      "retry.",
			      "cluster \"%s\" coordinator %s:%u answered SSLRequest with an error",
			      s->cluster, L->target.host, L->target.port);
		return;
	}
	/* Nothing may follow the answer: bytes here would be injected plaintext. */
	if (n != 1 || (answer != 'S' && answer != 'N')) {
		client_refuse(s, "08P01", "Check the coordinator's address and TLS settings.",
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

static void connect_server(struct session *s);

/*
 * The directory does not let the tenant through: 57P03 (clients retry it)
 * with what to do. A moving tenant's sessions are refused for now; a hold
 * (wait up to pause_timeout, then go on) belongs with the console's PAUSE.
 */
static void refuse_placement(struct session *s, const struct route_place *pl, bool sure)
{
	if (!sure)
		client_refuse(s, "57P03",
			      "The router has lost contact with the tenant directory for longer "
			      "than directory_lease; check [directory] conninfo and the directory "
			      "database. Retry once it is back.",
			      "the placement of tenant \"%s\" cannot be confirmed: the tenant "
			      "directory is out of reach",
			      s->tenant);
	else if (pl->state == DIR_MOVING)
		client_refuse(s, "57P03", "Retry in a few seconds: the move switches it to its new "
			      "cluster when its rows are copied.",
			      "tenant \"%s\" is being moved; retry", s->tenant);
	else if (pl->state == DIR_BLOCKED)
		client_refuse(s, "57P03",
			      "The tenant directory blocks this tenant; ask the operator to set its "
			      "row active.",
			      "tenant \"%s\" is blocked", s->tenant);
	else
		client_refuse(s, "57P03",
			      "Fix the tenant's row in the tenant directory (an unknown cluster or "
			      "state), or add the cluster to this router's configuration.",
			      "tenant \"%s\" has a directory row this router cannot use", s->tenant);
}

/* The tenant is known: its cluster, that cluster's writer, and a connection to it. */
void client_connect_tenant(struct session *s, const struct startup *st, const struct tenant *tp,
			   size_t len)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct login *L = s->login;
	const struct cluster_cfg *cl;
	struct tenant t = *tp;
	struct route_place pl;
	char why[320];
	size_t idx;
	bool sure;

	/* Directory, pins, ring (dirsync.h); the directory's state may refuse the tenant. */
	sure = dirsync_place(rt->dir, cfg, t.name, t.len, &pl);
	L->pinned = pl.source == ROUTE_PIN;
	s->tenant = strdup(t.name);
	if (s->tenant == NULL) {
		client_close(s);
		return;
	}
	if (!sure || pl.cluster < 0 || pl.state == DIR_MOVING || pl.state == DIR_BLOCKED) {
		refuse_placement(s, &pl, sure);
		return;
	}
	idx = (size_t)pl.cluster;
	snprintf(s->cluster, sizeof(s->cluster), "%s", cfg->clusters[idx].name);
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
	client_log(s, LOG_INFO, "routed host=%s:%u by=%s%s", L->target.host, L->target.port,
	     pl.source == ROUTE_DIRECTORY ? "directory" : L->pinned ? "pin" : "ring", L->lc ? " tenant_from=query" : "");
	s->stc = stats_cluster(s->cluster);
	stats_session_routed(s->stc, L->pinned, s->state);
	connect_server(s);
}

/* L->target, sv_mode and sv_ctx are set: open the connection to the server. */
static void connect_server(struct session *s)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct login *L = s->login;
	int rc;

	rc = uv_tcp_init(rt->loop, &s->sv.tcp);
	if (rc < 0) {
		client_refuse(s, "08006", "Retry.", "could not create a socket: %s",
			      uv_strerror(rc));
		return;
	}
	s->sv.inited = true;
	s->sv.tcp.data = s;
	s->open_handles++;
	client_set_state(s, CLIENT_CONNECTING);
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

/* A host route's name is resolved: connect to its first address. */
static void route_gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct session *s = req->data;
	struct login *L = s->login;

	L->resolving = false;
	/* The request counted as a handle: the session may have closed meanwhile. */
	if (--s->open_handles == 0) {
		uv_freeaddrinfo(res);
		session_free(s);
		return;
	}
	if (s->closed || s->state != CLIENT_ROUTING) {
		uv_freeaddrinfo(res);
		return;
	}
	if (status < 0 || res == NULL) {
		client_refuse(s, "08006", "Check the host of this [route.NAME] and name resolution.",
			      "route \"%s\": could not resolve %s: %s", s->route, L->target.host,
			      status < 0 ? uv_strerror(status) : "no address");
		uv_freeaddrinfo(res);
		return;
	}
	memcpy(&L->target.addr, res->ai_addr, res->ai_addrlen);
	uv_freeaddrinfo(res);
	client_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host, L->target.port,
		   s->route);
	connect_server(s);
}

/*
 * A [route.NAME] for the client's database: its cluster's writer, or its
 * fixed host, whatever the tenant. The startup packet goes on unchanged.
 */
static void connect_route(struct session *s, const struct route_cfg *r, size_t len)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct login *L = s->login;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	char why[320], port[8];
	int rc;

	snprintf(s->route, sizeof(s->route), "%s", r->name);
	L->pkt = L->in;
	L->pktlen = len;
	L->extra_off = len;
	if (r->cluster >= 0) {
		const struct cluster_cfg *cl = &cfg->clusters[r->cluster];

		snprintf(s->cluster, sizeof(s->cluster), "%s", cl->name);
		if (!health_writer(rt->health, s->cluster, &L->target, why, sizeof(why))) {
			client_refuse(s, "57P03",
				      "Retry once the cluster has a healthy coordinator.",
				      "route \"%s\": cluster \"%s\" has no healthy coordinator (%s)",
				      s->route, s->cluster, why);
			return;
		}
		L->sv_mode = cl->tls_mode;
		if (cl->tls_ctx)
			L->sv_ctx = tls_ctx_ref(cl->tls_ctx);
		client_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host,
			   L->target.port, s->route);
		connect_server(s);
		return;
	}
	snprintf(s->cluster, sizeof(s->cluster), "route:%s", r->name);
	snprintf(L->target.host, sizeof(L->target.host), "%s", r->host.host);
	L->target.port = r->host.port;
	L->sv_mode = r->tls_mode;
	if (r->tls_ctx)
		L->sv_ctx = tls_ctx_ref(r->tls_ctx);
	if (uv_ip4_addr(r->host.host, r->host.port, (struct sockaddr_in *)&L->target.addr) == 0 ||
	    uv_ip6_addr(r->host.host, r->host.port, (struct sockaddr_in6 *)&L->target.addr) == 0) {
		client_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host,
			   L->target.port, s->route);
		connect_server(s);
		return;
	}
	/* A name: resolved for each session on the thread pool, as libpq would. */
	snprintf(port, sizeof(port), "%u", r->host.port);
	L->gai.data = s;
	rc = uv_getaddrinfo(rt->loop, &L->gai, route_gai_cb, r->host.host, port, &hints);
	if (rc < 0) {
		client_refuse(s, "08006", "Retry.", "route \"%s\": could not resolve %s: %s",
			      s->route, r->host.host, uv_strerror(rc));
		return;
	}
	L->resolving = true;
	s->open_handles++;
}

/* The database the server will open: the startup packet's, else the user's name. */
static const char *startup_database(const struct startup *st)
{
	const struct startup_param *p = startup_get(st, "database");

	if (p == NULL || p->vlen == 0)
		p = startup_get(st, "user");
	return p ? p->val : NULL;
}

static void route(struct session *s, const struct startup *st, size_t len)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	const struct route_cfg *r;
	const char *db;
	struct tenant t;

	client_set_state(s, CLIENT_ROUTING);
	client_stop_reading(&s->cl);
	/*
	 * No refusal while draining: a session accepted before the listeners
	 * closed is ours to serve. In a rolling restart its startup packet may
	 * come after SIGTERM, and 57P01 would be a lost connection.
	 */
	if (s->over_limit) {
		refuse_over_limit(s);
		return;
	}
	/* A static route wins over any tenant: its database is not a tenant's. */
	db = cfg->nroutes ? startup_database(st) : NULL;
	if (db && (r = config_route_lookup(cfg, db)) != NULL) {
		connect_route(s, r, len);
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
	client_connect_tenant(s, st, &t, len);
}

static void handle_cancel(struct session *s, const struct startup *st, size_t len)
{
	union cancel_addr addr;
	uint8_t pkt[12 + PROTO_MAX_CANCEL_KEY];
	size_t plen;

	/* No answer either way, as PostgreSQL does: the client just sees the close. */
	if (cancel_lookup_packet(s->rt->cancels, st->cancel_pid, st->cancel_key,
				 st->cancel_key_len, s->login->in, len, &addr, pkt, &plen)) {
		client_log(s, LOG_DEBUG, "forwarding cancel request pid=%u", st->cancel_pid);
		cancel_forward(s->rt->loop, &addr, pkt, plen);
	} else {
		/* Perhaps a session of the process we replace, or of the one replacing us. */
		client_log(s, LOG_DEBUG, "cancel request for an unknown key pid=%u", st->cancel_pid);
		peer_forward_cancel(s->login->in, len);
	}
	client_close(s);
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
	client_set_state(s, CLIENT_TLS);
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
			if (client_send_copy(s, &s->cl, answer_yes, 1) < 0)
				client_close(s);
			else
				client_tls_start(s);
			return;
		}
		/* Not offered: 'N', then the client goes on in plaintext (or gives up). */
		if (client_send_copy(s, &s->cl, answer_no, 1) < 0)
			client_close(s);
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
		client_log(s, LOG_DEBUG, "%s read error: %s", sd == &s->cl ? "client" : "server",
		     uv_strerror((int)err));
	switch (s->state) {
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		if (sd == &s->sv) {
			char what[128];

			if (err == UV_EOF)
				snprintf(what, sizeof(what), "closed the connection");
			else
				snprintf(what, sizeof(what), "lost the connection (%s)",
					 uv_strerror((int)err));
			server_login_lost(s, "08006", what);
			break;
		}
		/* The client left: what it sent still goes to the server. */
		if (s->state == CLIENT_AUTH_RELAY)
			client_drain(s, &s->sv);
		else
			client_close(s);
		break;
	case CLIENT_SPLICING:
		/* Whatever one side sent before leaving still goes to the other. */
		client_drain(s, other(s, sd));
		break;
	case CLIENT_CONNECTING:
		if (sd == &s->sv) {
			struct login *L = s->login;

			client_refuse(s, "08006",
				      "The server ended the connection before TLS was set up: "
				      "check its log and its ssl settings, then retry.",
				      "cluster \"%s\" coordinator %s:%u %s during TLS setup",
				      s->cluster, L->target.host, L->target.port,
				      err == UV_EOF ? "closed the connection"
						    : "lost the connection");
			break;
		}
		client_close(s);
		break;
	case CLIENT_CLOSING:
		break;
	default:
		client_close(s);
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
				client_close(s);
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
			char why[160];
			bool ok = relay_auth(s, (const uint8_t *)b->data, n, why, sizeof(why));

			block_put(b);
			if (!ok) {
				server_login_lost(s, "08P01", why);
				return;
			}
			if (s->login && s->login->ready &&
			    (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SERVER_LOGIN)) {
				bool local = s->state == CLIENT_SERVER_LOGIN;

				client_set_state(s, CLIENT_SPLICING);
				uv_timer_stop(&s->timer);
				client_log(s, LOG_DEBUG, "login complete");
				login_free(s->login);
				s->login = NULL;
				if (local)
					client_start_reading(s, &s->cl);
			}
		} else if (s->state == CLIENT_SERVER_LOGIN) {
			bool ok = client_gbuf_add(&s->login->lc->held, b->data, n);

			block_put(b);
			if (!ok)
				client_close(s);
		} else {
			if (s->login->sasl_pending && s->sv.tls && s->cl.tls &&
			    !check_sasl_initial(s, (const uint8_t *)b->data, n)) {
				block_put(b);
				return;
			}
			if (s->g.on)
				guard_client(s, b, n);
			else
				client_forward(s, &s->sv, b, n);
		}
		break;
	case CLIENT_SPLICING:
		if (!s->g.on)
			client_forward(s, other(s, sd), b, n);
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
		client_log(s, LOG_DEBUG, "server TLS established");
		send_startup(s);
		return;
	}
	client_set_state(s, CLIENT_STARTUP);
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
		client_close(s);
		return;
	}
	if (!sd->tls_ready) {
		int rc = tls_handshake(sd->tls);

		if (flush_tls(s, sd) < 0) {
			client_close(s);
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
				client_log(s, LOG_INFO, "client TLS handshake failed: %s",
				     tls_error(sd->tls));
				/* The alert, if any, is queued: let it go out. */
				client_drain(s, &s->cl);
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
			client_close(s);
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
			client_log(s, LOG_INFO, "%s TLS error: %s", sd == &s->cl ? "client" : "server",
			     tls_error(sd->tls));
			read_end(s, sd, UV_EPROTO);
			return;
		}
		break;
	}
	/* Reading may have produced records to send (alerts, session tickets). */
	if (!s->closed && flush_tls(s, sd) < 0)
		client_close(s);
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
			client_log(s, LOG_ERROR, "out of memory for relay buffers, closing");
			client_close(s);
		} else if (nread < 0) {
			sd->reading = false;
			read_end(s, sd, nread);
		}
		return;
	}
	stats_bytes(sd == &s->cl ? STATS_FROM_CLIENT : STATS_FROM_SERVER, (size_t)nread);
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

/* At most one line a second about connections refused for a limit, per loop. */
#define LIMIT_LOG_MS 1000

/*
 * Which limit a new connection is over, if any. max_client_conn counts every
 * session accepted and not being refused (a silent connection holds a slot
 * as much as a busy one), and the open file limit caps sessions at what
 * main.c computed from RLIMIT_NOFILE, two descriptors each.
 */
static enum over_limit over_which_limit(struct router *rt)
{
	struct limits *lim = rt->limits;
	size_t live = atomic_load(rt->live), refusing = atomic_load(&lim->refusing);
	/* This one included; other loops may move both counters meanwhile. */
	size_t admitted = live > refusing ? live - refusing : 0;

	if (atomic_load(&lim->nofile) > 0 && admitted > atomic_load(&lim->fd_sessions))
		return OVER_FDS;
	if (admitted > rt->cfg->max_client_conn)
		return OVER_CONN;
	return OVER_NONE;
}

/*
 * Decides at accept whether the session may go on (true), perhaps only to
 * be refused with 53300 after its startup packet. That wait is what lets
 * libpq show our message: it discards an ErrorResponse that answers its
 * SSLRequest (CVE-2024-10977), and sslmode=prefer sends one first. But a
 * waiting connection holds a descriptor, so only wait_slots of them wait,
 * and only for OVER_LIMIT_GRACE_MS; any more are refused at once, their
 * descriptors closed before the next accept (false).
 */
static bool admit(struct session *s)
{
	struct router *rt = s->rt;
	struct limits *lim = rt->limits;
	enum over_limit over = over_which_limit(rt);
	uint64_t now = uv_now(rt->loop);
	size_t waiting, nfd, nshed;

	if (over != OVER_NONE) {
		s->over_limit = (uint8_t)over;
		waiting = atomic_fetch_add(&lim->refusing, 1);
		s->refuse_now = waiting >= atomic_load(&lim->wait_slots);
	}
	/* Counts this refusal, or tells the tail of a burst of them once its line is due. */
	if (over == OVER_FDS)
		nfd = log_limit_hit(&rt->fd_log, now, LIMIT_LOG_MS);
	else
		nfd = log_limit_due(&rt->fd_log, now, LIMIT_LOG_MS);
	if (over == OVER_CONN && s->refuse_now)
		nshed = log_limit_hit(&rt->shed_log, now, LIMIT_LOG_MS);
	else
		nshed = log_limit_due(&rt->shed_log, now, LIMIT_LOG_MS);
	if (nfd > 0)
		log_warn("open file limit reached: refused %zu connections since the last line; "
			 "the limit (%zu) fits %zu sessions, raise LimitNOFILE or ulimit -n",
			 nfd, atomic_load(&lim->nofile), atomic_load(&lim->fd_sessions));
	if (nshed > 0)
		log_warn("max_client_conn = %u reached: refused %zu connections at once since "
			 "the last line",
			 rt->cfg->max_client_conn, nshed);
	if (!s->refuse_now)
		return true;
	refuse_over_limit(s);
	return false;
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
	stats_session_new(CLIENT_STARTUP);
	s->t0_ns = uv_hrtime();
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
		client_close(s);
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
	if (!admit(s))
		return;
	s->login = calloc(1, sizeof(*s->login));
	if (s->login == NULL) {
		log_error("out of memory for a new session");
		client_close(s);
		return;
	}
	s->login_deadline = s->started + rt->cfg->client_login_timeout_ms;
	/* Decided once: framing must start with the session's first message. */
	guard_init(s);
	/* Refused for a limit: a moment to send the startup packet, not the login timeout. */
	if (s->over_limit && OVER_LIMIT_GRACE_MS < rt->cfg->client_login_timeout_ms)
		arm_timer(s, OVER_LIMIT_GRACE_MS);
	else
		arm_timer(s, rt->cfg->client_login_timeout_ms);
	client_start_reading(s, &s->cl);
}

size_t client_tenant_sessions(struct router *rt, const void *tenant, size_t len,
			      const char *end_why, bool force)
{
	struct session *s, *next;
	size_t n = 0;

	for (s = rt->sessions; s; s = next) {
		next = s->next; /* client_refuse frees nothing before its close callbacks */
		if (s->tenant == NULL || s->route[0] || s->closed || s->state == CLIENT_CLOSING)
			continue;
		if (tenant && (strlen(s->tenant) != len || memcmp(s->tenant, tenant, len) != 0))
			continue;
		/* A spliced session ends between statements, or when forced, at once. */
		if (end_why && (force || s->state != CLIENT_SPLICING || spliced_idle(s)))
			client_refuse(s, "57P01", "Reconnect: new sessions go where the tenant lives now.",
				      "%s", end_why);
		else
			n++;
	}
	return n;
}

size_t client_ring_moves(struct router *rt, const struct config *nc, char *first, size_t cap)
{
	size_t n = 0;

	for (struct session *s = rt->sessions; s; s = s->next) {
		struct route_place pl;
		const char *to;

		if (s->tenant == NULL || s->route[0] || s->cluster[0] == '\0' || s->closed ||
		    s->state == CLIENT_CLOSING)
			continue;
		(void)dirsync_place(rt->dir, nc, s->tenant, strlen(s->tenant), &pl);
		/* Directory rows and pins do not move with the ring. */
		if (pl.source != ROUTE_RING)
			continue;
		to = nc->clusters[pl.cluster].name;
		if (strcmp(to, s->cluster) == 0)
			continue;
		if (n++ == 0)
			snprintf(first, cap, "\"%s\" (from cluster \"%s\" to \"%s\")", s->tenant,
				 s->cluster, to);
	}
	return n;
}

void client_close_all(struct router *rt)
{
	for (struct session *s = rt->sessions; s; s = s->next)
		client_close(s);
}
