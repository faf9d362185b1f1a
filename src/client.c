/*
 * client.c - one client session, from accept to close.
 *
 * A session is one allocation with its libuv handles embedded (the client
 * TCP in its struct conn, one timer); it is freed only in the last close
 * callback. The server connection is an allocation of its own (server.c),
 * closed with the session and freed in its own close callback.
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
 * packet, the chosen server; the framer over the server's messages is the
 * server connection's); once the session splices it is freed, so an idle
 * session holds no buffer.
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
 * come up from conn.c through on_data -> deliver, and all bytes to a leg go
 * down through conn_send, so the state machine does not care which legs
 * are encrypted. The server leg is a struct server (server.c), its own
 * allocation: connecting, TLS, the framing of its login messages and the
 * removal of SCRAM-SHA-256-PLUS live there, and it reports back through
 * the struct server_ops given here.
 *
 * What we never do: send a tenant to a second cluster. A session's cluster
 * is chosen once, before connecting, and nothing afterwards re-routes it.
 *
 * Concerns below this file share its types (session.h): client_local.c,
 * for clients that name the tenant only in SQL (the router logs them in
 * itself, then logs in to the server for them), link.c, the splice, and
 * client_guard.c, the stickiness guard on spliced sessions. They call up
 * only through s->up, the struct session_ops this file gives each session.
 */
#include "client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "admin.h"
#include "cancel.h"
#include "config.h"
#include "conn.h"
#include "directory.h"
#include "dirsync.h"
#include "health.h"
#include "log.h"
#include "peer.h"
#include "pool.h"
#include "proto.h"
#include "route.h"
#include "router.h"
#include "server.h"
#include "splice.h"
#include "startup.h"
#include "tls.h"

#include "session.h"

static const char *const state_names[] = {"startup",	  "tls",	"routing",
					  "connecting",	  "auth_relay", "splicing",
					  "closing",	  "local_auth", "no_tenant",
					  "server_login", "admin"};

const char *client_state_name(enum client_state s)
{
	return (size_t)s < ARRAY_SIZE(state_names) ? state_names[s] : "?";
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
		[CLIENT_LOCAL_AUTH] = 1u << CLIENT_NO_TENANT | 1u << CLIENT_ROUTING |
				      1u << CLIENT_ADMIN | 1u << CLIENT_CLOSING,
		[CLIENT_ADMIN] = 1u << CLIENT_CLOSING,
		[CLIENT_NO_TENANT] = 1u << CLIENT_ROUTING | 1u << CLIENT_CLOSING,
		[CLIENT_SERVER_LOGIN] = 1u << CLIENT_SPLICING | 1u << CLIENT_CLOSING,
	};

	if (s->state == next)
		return;
	TR_ASSERT(allowed[s->state] & (1u << next));
	if (log_enabled(LOG_TRACE))
		session_log(s, LOG_TRACE, "state %s -> %s", client_state_name(s->state),
		     client_state_name(next));
	stats_session_state(s->stc, s->state, next);
	/* From now on the legs deliver nothing more. */
	if (next == CLIENT_CLOSING) {
		s->cl.halted = true;
		if (s->sv)
			s->sv->c.halted = true;
	}
	/* Both ways in (relayed and the router's own login) end here at ReadyForQuery. */
	if (next == CLIENT_SPLICING)
		stats_observe(STATS_LOGIN, uv_hrtime() - s->t0_ns);
	s->state = next;
	atomic_store_explicit(&s->ro.state, client_state_name(next), memory_order_relaxed);
}


static void login_free(struct login *L)
{
	if (L == NULL)
		return;
	local_free(L->lc);
	if (L->sv_ctx)
		tls_ctx_free(L->sv_ctx);
	free(L->in);
	free(L->fwd);
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
	roster_remove(&s->ro);
	console_free(s->con);
	stats_session_end(s->stc, s->state);
	if (s->over_limit)
		atomic_fetch_sub(&rt->limits->refusing, 1);
	login_free(s->login);
	guard_free(&s->g);
	conn_release(&s->cl);
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

static void cl_closed(struct conn *c)
{
	struct session *s = c->owner;

	if (--s->open_handles == 0)
		session_free(s);
}

/* The server connection goes now (its memory in its own close callback). */
static struct pool_limits pool_limits_of(const struct config *cfg, const char *cluster)
{
	int i = config_cluster_index(cfg, cluster);
	struct pool_limits lim = {
		.pool_size = i >= 0 ? cfg->clusters[i].pool_size : cfg->pool_size,
		.max_server_conn = i >= 0 ? cfg->clusters[i].max_server_conn : cfg->max_server_conn,
		.idle_timeout_ms = cfg->server_idle_timeout_ms,
		.lifetime_ms = cfg->server_lifetime_ms,
		.login_retry_ms = cfg->server_login_retry_ms,
		.reset_query = cfg->pool_reset_sql ? cfg->pool_reset_sql : "DISCARD ALL",
	};

	return lim;
}

static void drop_server(struct session *s)
{
	struct server *sv = s->sv;

	if (sv == NULL)
		return;
	link_detach(s);
	s->sv = NULL;
	/* A pooled connection is accounted for by its pool, which closes it. */
	if (sv->pool) {
		struct pool_limits lim = pool_limits_of(s->rt->cfg, s->cluster);

		pool_release(sv, false, 'I', &lim);
	} else {
		server_close(sv);
	}
}

/* Closes every handle now; pending writes are cancelled. */
static void client_close(struct session *s)
{
	if (s->closed)
		return;
	if (s->state != CLIENT_CLOSING)
		set_state(s, CLIENT_CLOSING);
	s->closed = true;
	cancel_unregister(s->rt->cancels, &s->ce);
	session_log(s, LOG_DEBUG, "closed age=%llums",
	     (unsigned long long)(uv_now(s->rt->loop) - s->started));
	/* Its callback still runs (UV_EAI_CANCELED) and frees the session if last. */
	if (s->login && s->login->resolving)
		uv_cancel((uv_req_t *)&s->login->gai);
	uv_close((uv_handle_t *)&s->timer, close_cb);
	drop_server(s);
	pool_cancel(&s->preq);
	if (s->login && s->login->pool_slot) {
		s->login->pool_slot = false;
		pool_slot_done(s->preq.pool, s->login->pool_state,
			       s->login->pool_err[0] ? s->login->pool_err : NULL);
	}
	conn_close(&s->cl);
}

static void timer_cb(uv_timer_t *t);
static const struct conn_ops cl_ops;
static const struct server_ops sv_ops;
static const struct session_ops session_up;

static void arm_timer(struct session *s, uint64_t ms)
{
	uv_timer_start(&s->timer, timer_cb, ms, 0);
}

static uint64_t login_left(struct session *s)
{
	uint64_t now = uv_now(s->rt->loop);

	return s->login_deadline > now ? s->login_deadline - now : 0;
}

/*
 * Stops reading both sides, lets what is queued for dst reach it, then
 * closes everything (bounded by CLOSE_FLUSH_MS).
 */
static void client_drain(struct session *s, struct conn *dst)
{
	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	set_state(s, CLIENT_CLOSING);
	conn_stop_reading(&s->cl);
	if (s->sv)
		conn_stop_reading(&s->sv->c);
	arm_timer(s, CLOSE_FLUSH_MS);
	if (dst == NULL || conn_shutdown(dst) < 0)
		client_close(s);
}

static struct conn *other(struct session *s, struct conn *c)
{
	return c == &s->cl ? session_server_conn(s) : &s->cl;
}

static void send_failed(struct session *s, struct conn *dst, int rc)
{
	session_log(s, LOG_DEBUG, "write to %s failed: %s", dst == &s->cl ? "client" : "server",
		    uv_strerror(rc));
	/* The server is gone: still hand the client what it already sent. */
	if (dst != &s->cl)
		client_drain(s, &s->cl);
	else
		client_close(s);
}

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

/*
 * True when an ErrorResponse can reach the client as a whole message: before
 * splicing we only ever send it whole messages, but mid-handshake there is
 * no channel to send one on; a spliced session only when idle (above).
 */
static bool client_at_boundary(struct session *s)
{
	if (s->cl.tls && !s->cl.tls_ready)
		return false;
	return spliced_idle(s) || s->state == CLIENT_STARTUP || s->state == CLIENT_TLS ||
	       s->state == CLIENT_ROUTING || s->state == CLIENT_CONNECTING ||
	       s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_LOCAL_AUTH ||
	       s->state == CLIENT_NO_TENANT || s->state == CLIENT_SERVER_LOGIN ||
	       s->state == CLIENT_ADMIN;
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
	conn_write_now(&s->cl, b->data, len);
	block_put(b);
	client_close(s);
}

/*
 * The one way to refuse a client: a FATAL ErrorResponse naming the router,
 * with a hint, then close once it is flushed. The files below reach it
 * through session_refuse() (s->up->refuse).
 */
static void refuse(struct session *s, const char *sqlstate, const char *hint, const char *why)
{
	char msg[768];
	const char *text;
	struct block *b;
	size_t len;

	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	stats_refusal(sqlstate, s->cluster, s->tenant);
	snprintf(msg, sizeof(msg), "tenant-router: %s", why);
	text = msg + strlen("tenant-router: ");
	/* Those refused at once come in floods: client_accept logs them, rate-limited. */
	if (!s->refuse_now)
		session_log(s, LOG_INFO, "refused sqlstate=%s reason=\"%s\"", sqlstate, text);
	if (!client_at_boundary(s)) {
		client_close(s);
		return;
	}
	/* Messages we gathered for the client go before the error. */
	if (s->login && s->cl.out && !conn_out_flush(&s->cl))
		return;
	drop_server(s);
	b = conn_error_block("FATAL", sqlstate, msg, hint, &len);
	if (b == NULL) {
		client_close(s);
		return;
	}
	if (s->refuse_now) {
		refuse_at_once(s, b, len);
		return;
	}
	if (conn_send(&s->cl, b, len) < 0) {
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
		session_refuse(s, "53300",
			      "Raise the router's open file limit (ulimit -n, or LimitNOFILE= in "
			      "its systemd unit), or lower max_client_conn.",
			      "too many client connections: the open file limit (%zu) fits %zu "
			      "sessions",
			      atomic_load(&lim->nofile), atomic_load(&lim->fd_sessions));
	else
		session_refuse(s, "53300", "Close idle connections, or raise max_client_conn.",
			      "too many client connections (max_client_conn = %u)",
			      s->rt->cfg->max_client_conn);
}

static void connect_tenant(struct session *s, const struct startup *st, const struct tenant *tp,
			   size_t len);

/* A held session's timer: go on, keep waiting, or give up after pause_timeout. */
static void hold_check(struct session *s)
{
	struct login *L = s->login;
	const struct config *cfg = s->rt->cfg;
	struct startup st;
	const char *why;
	enum roster_hold h = tenant_held(s->rt, &s->ro, L->hold_t.name, L->hold_t.len);

	if (h == ROSTER_GO) {
		if (startup_parse(L->in, L->hold_len, &st, &why) != PROTO_OK) {
			client_close(s);
			return;
		}
		arm_timer(s, login_left(s) ? login_left(s) : 1);
		connect_tenant(s, &st, &L->hold_t, L->hold_len);
		return;
	}
	if (uv_now(s->rt->loop) - L->hold_since >= cfg->pause_timeout_ms) {
		if (h == ROSTER_PAUSED)
			session_refuse(s, "57P03",
				       "An operator paused this tenant (PAUSE TENANT on the admin "
				       "console); retry later.",
				       "tenant \"%s\" is paused: no new session within pause_timeout "
				       "(%llu ms)",
				       L->hold_t.name, (unsigned long long)cfg->pause_timeout_ms);
		else
			session_refuse(s, "57P03", "Its placement is being changed; retry shortly.",
				       "tenant \"%s\" is being moved to another cluster",
				       L->hold_t.name);
		return;
	}
	arm_timer(s, HOLD_RECHECK_MS);
}

static void timer_cb(uv_timer_t *t)
{
	struct session *s = t->data;
	const struct config *cfg = s->rt->cfg;

	switch (s->state) {
	case CLIENT_STARTUP:
	case CLIENT_TLS:
	case CLIENT_ROUTING:
		if (s->login && s->login->holding) {
			hold_check(s);
			break;
		}
		if (s->over_limit) {
			refuse_over_limit(s);
			break;
		}
		if (s->login && s->login->resolving) {
			session_refuse(s, "08006", "Check name resolution on the router's host.",
				      "route \"%s\": resolving %s took longer than the login timeout",
				      s->route, s->login->target.host);
			break;
		}
		session_refuse(s, "08006", "Send a startup packet promptly after connecting.",
			      "login timeout: no complete startup packet within %llu ms",
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_CONNECTING:
		if (s->preq.waiting) {
			pool_cancel(&s->preq);
			session_refuse(s, "53300",
				       "All server connections of this pool are in use: retry, make "
				       "sessions shorter, or raise pool_size or max_server_conn.",
				       "no server connection of cluster \"%s\" became free within "
				       "query_wait_timeout (%llu ms)",
				       s->cluster, (unsigned long long)cfg->query_wait_timeout_ms);
			break;
		}
		if (login_left(s) == 0)
			session_refuse(s, "08006", "Retry; if it persists, check the cluster.",
				      "login timeout while connecting to cluster \"%s\"",
				      s->cluster);
		else
			session_refuse(s, "08006",
				      "The coordinator did not answer in time; retry, or check "
				      "the cluster and the network.",
				      "could not connect to cluster \"%s\" coordinator %s:%u: "
				      "timed out",
				      s->cluster, s->login->target.host, s->login->target.port);
		break;
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		session_refuse(s, "08006", "Complete authentication within client_login_timeout.",
			      "login to cluster \"%s\" did not complete within %llu ms", s->cluster,
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_LOCAL_AUTH:
		session_refuse(s, "08006", "Complete authentication within client_login_timeout.",
			      "login did not complete within %llu ms",
			      (unsigned long long)cfg->client_login_timeout_ms);
		break;
	case CLIENT_SPLICING:
	case CLIENT_NO_TENANT:
	case CLIENT_ADMIN:
		break;
	case CLIENT_CLOSING:
		client_close(s);
		break;
	}
}

/* One whole server message during the auth relay; false closes the session. */
static bool relay_message(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct login *L = s->login;
	struct proto_error_fields f;
	int rc;

	switch (type) {
	case 'K':
		/* BackendKeyData: pid, then a 4-byte (3.0) to 256-byte (3.2) secret. */
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			break;
		rc = cancel_register(s->rt->cancels, &s->ce, proto_get_u32(body), body + 4,
				     len - 4, (const struct sockaddr *)&L->target.addr);
		if (rc < 0)
			session_log(s, LOG_WARN, "could not remember cancel key: %s",
				    uv_strerror(rc));
		break;
	case 'E':
		if (proto_parse_error(body, len, &f) == PROTO_OK)
			session_log(s, LOG_INFO, "server refused login sqlstate=%s message=\"%s\"",
				    f.sqlstate ? f.sqlstate : "?", f.message ? f.message : "");
		else
			session_log(s, LOG_INFO, "server refused login");
		break;
	default:
		break;
	}
	return conn_send_msg(&s->cl, type, body, len);
}

/* server.c framed one whole login message: relay it, or answer it ourselves. */
static bool sv_login_msg(struct server *sv, uint8_t type, const uint8_t *body, size_t len)
{
	struct session *s = sv->owner;
	bool ok;

	if (s->login->lc)
		ok = local_server_message(s, type, body, len);
	else
		ok = relay_message(s, type, body, len);
	return ok && (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SERVER_LOGIN);
}

/* Bytes after the login's ReadyForQuery: answers to messages pipelined behind the login. */
static void sv_login_rest(struct server *sv, const uint8_t *p, size_t n)
{
	struct session *s = sv->owner;

	if (s->g.on)
		guard_server_bytes(s, p, n);
	else
		conn_out_put(&s->cl, p, n);
}

static bool relay_auth(struct session *s, const uint8_t *p, size_t n, char *why, size_t cap)
{
	bool ok = server_login_bytes(s->sv, p, n, why, cap);

	if (s->login)
		conn_out_flush(&s->cl);
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

	if (s->sv && s->sv->server_err) {
		client_drain(s, &s->cl);
		return;
	}
	session_log(s, LOG_WARN, "server %s:%u failed during login: %s", L->target.host,
		   L->target.port, what);
	if (strcmp(sqlstate, "08P01") == 0)
		session_refuse(s, sqlstate,
			      "The server at that address does not speak the PostgreSQL "
			      "protocol as expected: check the cluster's hosts in the "
			      "router's configuration, and the server's log.",
			      "cluster \"%s\" coordinator %s:%u broke the protocol during "
			      "login: it sent %s",
			      s->cluster, L->target.host, L->target.port, what);
	else
		session_refuse(s, sqlstate,
			      "The server ended the login without saying why (a crash, a "
			      "restart, a network failure): check its log, then retry.",
			      "cluster \"%s\" coordinator %s:%u %s during login", s->cluster,
			      L->target.host, L->target.port, what);
}

/* The server connection is ready (TCP, and TLS if any): log in. */
static void send_startup(struct server *sv)
{
	struct session *s = sv->owner;
	struct login *L = s->login;
	int rc = conn_send_copy(&sv->c, L->pkt, L->pktlen);

	/* A client may pipeline its first messages behind the startup packet. */
	if (rc == 0 && L->inlen > L->extra_off) {
		/* The guard sees them as it sees everything the client sends later. */
		if (s->g.on)
			guard_client_bytes(s, L->in + L->extra_off, L->inlen - L->extra_off);
		else
			rc = conn_send_copy(&sv->c, L->in + L->extra_off, L->inlen - L->extra_off);
		if (s->closed)
			return;
	}
	if (rc < 0) {
		session_refuse(s, "08006", "Retry.",
			      "could not send the startup packet to cluster \"%s\": %s",
			      s->cluster, uv_strerror(rc));
		return;
	}
	if (L->lc) {
		/* We log in for the client; it waits for the answer to its statement. */
		set_state(s, CLIENT_SERVER_LOGIN);
		arm_timer(s, login_left(s));
		conn_start_reading(&sv->c);
		return;
	}
	set_state(s, CLIENT_AUTH_RELAY);
	arm_timer(s, login_left(s));
	conn_start_reading(&s->cl);
	if (s->sv)
		conn_start_reading(&s->sv->c);
}

static void connect_server(struct session *s);

/*
 * The directory does not let the tenant through: 57P03 (clients retry it)
 * with what to do. A moving tenant's new sessions are held before this
 * (tenant_held); one gets here only if its row turned moving in between.
 */
static void refuse_placement(struct session *s, const struct route_place *pl, bool sure)
{
	if (!sure)
		session_refuse(s, "57P03",
		               "The router has lost contact with the tenant directory for longer "
		               "than directory_lease; check [directory] conninfo and the directory "
		               "database. Retry once it is back.",
		               "the placement of tenant \"%s\" cannot be confirmed: the tenant "
		               "directory is out of reach",
		               s->tenant);
	else if (pl->state == DIR_MOVING)
		session_refuse(s, "57P03",
		               "Retry in a few seconds: the move switches it to its new "
		               "cluster when its rows are copied.",
		               "tenant \"%s\" is being moved; retry", s->tenant);
	else if (pl->state == DIR_BLOCKED)
		session_refuse(
		        s, "57P03",
		        "The tenant directory blocks this tenant; ask the operator to set its "
		        "row active.",
		        "tenant \"%s\" is blocked", s->tenant);
	else
		session_refuse(
		        s, "57P03",
		        "Fix the tenant's row in the tenant directory (an unknown cluster or "
		        "state), or add the cluster to this router's configuration.",
		        "tenant \"%s\" has a directory row this router cannot use", s->tenant);
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
	struct route_place pl;
	enum roster_hold hold;
	char why[320];
	size_t idx;
	bool sure;

	/* Paused, or its pin is changing: wait (bounded) before going anywhere. */
	hold = tenant_held(rt, &s->ro, t.name, t.len);
	if (hold != ROSTER_GO) {
		if (!L->holding) {
			L->holding = true;
			L->hold_since = uv_now(rt->loop);
			L->hold_t = t;
			L->hold_len = len;
			session_log(s, LOG_INFO, "tenant=%s %s: waiting", t.name,
				    hold == ROSTER_PAUSED ? "paused" : "being moved");
		}
		arm_timer(s, HOLD_RECHECK_MS);
		return;
	}
	if (L->holding) {
		L->holding = false;
		session_log(s, LOG_INFO, "tenant=%s released after %llums", t.name,
			    (unsigned long long)(uv_now(rt->loop) - L->hold_since));
	}
	/* Directory, pins, ring (dirsync.h); the directory's state may refuse the tenant. */
	sure = dirsync_place(rt->dir, cfg, t.name, t.len, &pl);
	L->pinned = pl.source == ROUTE_PIN;
	L->by_directory = pl.source == ROUTE_DIRECTORY;
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
		session_refuse(s, "57P03", hint, "cluster \"%s\" has no healthy coordinator (%s)",
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
			session_refuse(s, "08P01", "Shorten the startup parameters.",
				      "startup packet too long after adding the tenant");
			return;
		}
	} else {
		L->pkt = L->in;
		L->pktlen = len;
	}
	L->extra_off = len;
	session_log(s, LOG_INFO, "routed host=%s:%u by=%s%s", L->target.host, L->target.port,
		    pl.source == ROUTE_DIRECTORY ? "directory" : L->pinned ? "pin" : "ring",
		    L->lc ? (L->lc->pooled ? " pool_mode=session" : " tenant_from=query") : "");
	s->stc = stats_cluster(s->cluster);
	stats_session_routed(s->stc, L->pinned, s->state);
	connect_server(s);
}

/* L->target, sv_mode and sv_ctx are set: open the connection to the server. */
static void open_server(struct session *s)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct login *L = s->login;
	int rc;

	s->sv = server_new(rt->loop, &sv_ops, s, s->cluster, &L->target, L->sv_ctx, L->sv_mode,
			   &rc);
	L->sv_ctx = NULL; /* the server connection's now */
	if (s->sv == NULL) {
		session_refuse(s, "08006", "Retry.", "could not create a socket: %s",
			       uv_strerror(rc));
		return;
	}
	/* The client's own login passes through; ours (tenant source query) does not. */
	s->sv->relay = L->lc == NULL;
	link_attach(s);
	set_state(s, CLIENT_CONNECTING);
	arm_timer(s, cfg->server_connect_timeout_ms < login_left(s) ? cfg->server_connect_timeout_ms
								    : login_left(s));
	rc = server_connect(s->sv);
	if (rc < 0)
		session_refuse(s, "08006", "Retry.",
			      "could not connect to cluster \"%s\" coordinator %s:%u: %s",
			      s->cluster, L->target.host, L->target.port, uv_strerror(rc));
}

static void pooled_attach(struct session *s, struct server *sv)
{
	struct login *L = s->login;

	server_adopt(sv, &sv_ops, s);
	s->sv = sv;
	link_attach(s);
	/* The login framer reads the answers to what we send first; any type may come. */
	sv->relay = false;
	sv->hlen = 0;
	sv->got_ready = true;
	sv->ready = false;
	sv->c.halted = false;
	/* A reused connection keeps the address it was made for. */
	L->target = sv->target;
	set_state(s, CLIENT_SERVER_LOGIN);
	s->login_deadline = uv_now(s->rt->loop) + s->rt->cfg->client_login_timeout_ms;
	arm_timer(s, login_left(s));
	session_log(s, LOG_DEBUG, "reusing a pooled server connection pid=%u", sv->pid);
	local_pooled_attach(s);
}

/* The pool's line moved for s: a connection (sv), a slot (NULL), or its pool went stale. */
static void pooled_ready(struct pool_req *r, struct server *sv)
{
	struct session *s = container_of(r, struct session, preq);

	if (s->closed || s->state != CLIENT_CONNECTING || s->login == NULL) {
		/* Cannot happen: a closing session leaves the line first. */
		if (sv)
			pool_release(sv, false, 'I', &(struct pool_limits){0});
		return;
	}
	uv_timer_stop(&s->timer);
	if (r->pool == NULL) {
		session_refuse(s, "08006", "Retry: the router connects to the new writer.",
			       "the writer of cluster \"%s\" changed while this client waited for "
			       "a server connection",
			       s->cluster);
		return;
	}
	if (sv) {
		pooled_attach(s, sv);
		return;
	}
	s->login->pool_slot = true;
	s->login_deadline = uv_now(s->rt->loop) + s->rt->cfg->client_login_timeout_ms;
	open_server(s);
}

/*
 * The pool key: the target and every startup parameter of the packet the
 * server gets, sorted, but application_name (set with SET when it differs).
 */
static size_t pool_key(struct session *s, uint8_t *out, size_t cap)
{
	struct login *L = s->login;
	struct startup st;
	const char *why;
	size_t order[STARTUP_MAX_PARAMS];
	struct wbuf w;

	if (startup_parse(L->pkt, L->pktlen, &st, &why) != PROTO_OK)
		return 0;
	for (size_t i = 0; i < st.nparams; i++) {
		size_t j = i;

		while (j > 0 && strcmp(st.params[order[j - 1]].key, st.params[i].key) > 0) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = i;
	}
	wb_init(&w, out, cap);
	wb_cstr(&w, L->target.host);
	wb_u32(&w, L->target.port);
	wb_u32(&w, (uint32_t)st.major << 16 | st.minor);
	for (size_t i = 0; i < st.nparams; i++) {
		const struct startup_param *p = &st.params[order[i]];

		if (strcmp(p->key, "application_name") == 0)
			continue;
		wb_cstr(&w, p->key);
		wb_cstr(&w, p->val);
	}
	return w.failed ? 0 : w.len;
}

/* pool_mode = session: a pooled connection to the writer, a slot to make one, or the line. */
static void pooled_connect(struct session *s)
{
	struct router *rt = s->rt;
	const struct config *cfg = rt->cfg;
	struct pool_limits lim = pool_limits_of(cfg, s->cluster);
	uint8_t key[PROTO_MAX_STARTUP_LEN + 300];
	size_t keylen = pool_key(s, key, sizeof(key));
	struct server *sv = NULL;
	const char *why = NULL;
	char state[6] = "08006";

	if (rt->pools == NULL)
		rt->pools = pool_set_new(rt->loop, rt->health);
	set_state(s, CLIENT_CONNECTING);
	s->preq.ready = pooled_ready;
	switch (pool_acquire(keylen ? rt->pools : NULL, s->cluster, &s->login->target, key, keylen,
			     &lim, &s->preq, &sv, &why, state)) {
	case POOL_GOT:
		pooled_attach(s, sv);
		return;
	case POOL_SLOT:
		s->login->pool_slot = s->preq.pool != NULL;
		open_server(s);
		return;
	case POOL_WAIT:
		session_log(s, LOG_DEBUG, "waiting for a pooled server connection");
		if (cfg->query_wait_timeout_ms)
			arm_timer(s, cfg->query_wait_timeout_ms);
		else
			uv_timer_stop(&s->timer);
		return;
	case POOL_REFUSE:
		session_refuse(s, state,
			       "The router waits server_login_retry after a failed login to the "
			       "cluster before it tries again; retry then.",
			       "%s", why);
		return;
	}
}

static void connect_server(struct session *s)
{
	struct login *L = s->login;
	char hp[300];

	/* For SHOW CLIENTS and SHOW TENANTS: where it went, and what decided it. */
	snprintf(hp, sizeof(hp), strchr(L->target.host, ':') ? "[%s]:%u" : "%s:%u", L->target.host,
		 L->target.port);
	roster_set_route(&s->ro, s->cluster, hp,
			 s->route[0]	   ? ROSTER_SRC_ROUTE
			 : L->by_directory ? ROSTER_SRC_DIRECTORY
			 : L->pinned	   ? ROSTER_SRC_PIN
					   : ROSTER_SRC_RING);
	if (s->login->lc && s->login->lc->pooled)
		pooled_connect(s);
	else
		open_server(s);
}

/* The client of a pooled connection is leaving: reset the connection for the next one. */
static void pooled_logout(struct session *s)
{
	struct server *sv = s->sv;
	struct pool_limits lim = pool_limits_of(s->rt->cfg, s->cluster);
	char txn;
	bool clean = pframe_clean(&s->pf, &txn);

	/* From now on a cancel for this client must not reach the connection. */
	cancel_unregister(s->rt->cancels, &s->ce);
	if (sv) {
		link_detach(s);
		s->sv = NULL;
		session_log(s, LOG_DEBUG, "giving back the server connection (%s, txn=%c)",
			    clean ? "clean" : "dirty", txn);
		/* Made without a pool (out of memory then): nobody keeps it. */
		if (sv->pool)
			pool_release(sv, clean, txn, &lim);
		else
			server_close(sv);
	}
	client_drain(s, &s->cl);
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
		session_refuse(s, "08006", "Check the host of this [route.NAME] and name resolution.",
			      "route \"%s\": could not resolve %s: %s", s->route, L->target.host,
			      status < 0 ? uv_strerror(status) : "no address");
		uv_freeaddrinfo(res);
		return;
	}
	memcpy(&L->target.addr, res->ai_addr, res->ai_addrlen);
	uv_freeaddrinfo(res);
	session_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host, L->target.port,
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
			session_refuse(s, "57P03",
				      "Retry once the cluster has a healthy coordinator.",
				      "route \"%s\": cluster \"%s\" has no healthy coordinator (%s)",
				      s->route, s->cluster, why);
			return;
		}
		L->sv_mode = cl->tls_mode;
		if (cl->tls_ctx)
			L->sv_ctx = tls_ctx_ref(cl->tls_ctx);
		session_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host,
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
		session_log(s, LOG_INFO, "routed host=%s:%u by=route:%s", L->target.host,
			   L->target.port, s->route);
		connect_server(s);
		return;
	}
	/* A name: resolved for each session on the thread pool, as libpq would. */
	snprintf(port, sizeof(port), "%u", r->host.port);
	L->gai.data = s;
	rc = uv_getaddrinfo(rt->loop, &L->gai, route_gai_cb, r->host.host, port, &hints);
	if (rc < 0) {
		session_refuse(s, "08006", "Retry.", "route \"%s\": could not resolve %s: %s",
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

	set_state(s, CLIENT_ROUTING);
	conn_stop_reading(&s->cl);
	/*
	 * No refusal while draining: a session accepted before the listeners
	 * closed is ours to serve. In a rolling restart its startup packet may
	 * come after SIGTERM, and 57P01 would be a lost connection.
	 */
	if (s->over_limit) {
		refuse_over_limit(s);
		return;
	}
	/* The admin console is a database of the router's own, on every listener. */
	db = startup_database(st);
	if (db && strcmp(db, ADMIN_DATABASE) == 0) {
		if (cfg->nadmin_users == 0) {
			session_refuse(s, "42501",
				       "Set [router] admin_users (and [auth] auth_file or auth_query) "
				       "to use it.",
				       "the admin console is off: no admin_users are configured");
			return;
		}
		s->admin = true;
		s->ro.admin = true;
		local_start(s, st, len);
		return;
	}
	/* A static route wins over any tenant: its database is not a tenant's. */
	db = cfg->nroutes ? db : NULL;
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
		session_refuse(s, "08004",
			      "Put the tenant in the connection string, e.g. "
			      "options='-c app.tenant_id=<tenant>' (PGOPTIONS, or the JDBC/DBeaver "
			      "driver property \"options\").",
			      "no tenant in the connection (expected setting \"%s\")",
			      cfg->rule.key);
		return;
	case TENANT_CONFLICT:
		session_refuse(s, "08004", "Give the tenant once, in one place.",
			      "the connection names more than one tenant in \"%s\"", cfg->rule.key);
		return;
	case TENANT_TOO_LONG:
		session_refuse(s, "08004", "Tenants are at most 255 bytes.",
			      "the tenant in \"%s\" is too long", cfg->rule.key);
		return;
	}
	if (cfg->pooling &&
	    cfg->clusters[route_lookup(cfg->pins, cfg->ring, t.name, t.len, NULL)].pool_mode ==
		    POOL_SESSION) {
		local_start_pooled(s, st, len, &t);
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
		session_log(s, LOG_DEBUG, "forwarding cancel request pid=%u", st->cancel_pid);
		cancel_forward(s->rt->loop, &addr, pkt, plen);
	} else {
		/* Perhaps a session of the process we replace, or of the one replacing us. */
		session_log(s, LOG_DEBUG, "cancel request for an unknown key pid=%u", st->cancel_pid);
		peer_forward_cancel(s->login->in, len);
	}
	client_close(s);
}

static const uint8_t answer_no[1] = {'N'};
static const uint8_t answer_yes[1] = {'S'};

/* Starts TLS on the client leg, as the TLS server. */
static bool client_tls_start(struct session *s)
{
	if (!conn_tls_start(&s->cl, s->rt->cfg->client_tls_ctx, true, NULL, false)) {
		session_refuse(s, "08006", "Retry.", "out of memory for TLS");
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
		session_refuse(s, "08P01", "Connect with a PostgreSQL client (protocol 3.0).",
			      "invalid startup packet length");
		return;
	case PROTO_OK:
		break;
	}
	if (L->inlen < total) {
		if (L->overflow)
			session_refuse(s, "08P01", "Connect with a PostgreSQL client.",
				      "startup packet too long");
		return;
	}
	if (startup_parse(L->in, total, &st, &why) != PROTO_OK) {
		session_refuse(s, "08P01", "Connect with a PostgreSQL client (protocol 3.0).",
			      "invalid startup packet: %s", why ? why : "malformed");
		return;
	}
	if (L->overflow) {
		session_refuse(s, "08P01", "Wait for the server's answer before sending more.",
			      "too much data sent with the startup packet");
		return;
	}
	switch (st.kind) {
	case STARTUP_SSL:
	case STARTUP_GSSENC:
		/* Plaintext sent ahead of the answer could not be encrypted: refuse it. */
		if (L->inlen > total) {
			session_refuse(s, "08P01", "Wait for the answer to SSLRequest/GSSENCRequest.",
				      "received unencrypted data after an encryption request");
			return;
		}
		if (++L->nego > 2 || s->cl.tls) {
			session_refuse(s, "08P01", "Send one SSLRequest or GSSENCRequest.",
				      "unexpected encryption request");
			return;
		}
		L->inlen = 0;
		if (st.kind == STARTUP_SSL && cfg->client_tls_ctx) {
			if (conn_send_copy(&s->cl, answer_yes, 1) < 0)
				client_close(s);
			else
				client_tls_start(s);
			return;
		}
		/* Not offered: 'N', then the client goes on in plaintext (or gives up). */
		if (conn_send_copy(&s->cl, answer_no, 1) < 0)
			client_close(s);
		return;
	case STARTUP_CANCEL:
		handle_cancel(s, &st, total);
		return;
	case STARTUP_V3:
		if (s->cl.tls == NULL && cfg->client_tls_mode >= TLS_CLIENT_REQUIRE) {
			session_refuse(s, "28000",
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

static void read_end(struct session *s, struct conn *sd, int err)
{
	bool server = sd != &s->cl;

	if (sd->tls_failed)
		session_log(s, LOG_INFO, "%s TLS error: %s", server ? "server" : "client",
			    tls_error(sd->tls));
	if (err != UV_EOF)
		session_log(s, LOG_DEBUG, "%s read error: %s", server ? "server" : "client",
			    uv_strerror(err));
	switch (s->state) {
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		if (server) {
			char what[128];

			if (err == UV_EOF)
				snprintf(what, sizeof(what), "closed the connection");
			else
				snprintf(what, sizeof(what), "lost the connection (%s)",
					 uv_strerror(err));
			server_login_lost(s, "08006", what);
			break;
		}
		/* The client left: what it sent still goes to the server. */
		if (s->state == CLIENT_AUTH_RELAY)
			client_drain(s, session_server_conn(s));
		else
			client_close(s);
		break;
	case CLIENT_SPLICING:
		/* A pooled connection outlives its client: it is reset, not shut down. */
		if (s->pooled && !server) {
			pooled_logout(s);
			break;
		}
		/* Whatever one side sent before leaving still goes to the other. */
		client_drain(s, other(s, sd));
		break;
	case CLIENT_CONNECTING:
		if (server) {
			struct login *L = s->login;

			session_refuse(s, "08006",
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

/* The login ended at ReadyForQuery: bytes in, bytes out from now on. */
static void login_complete(struct session *s)
{
	bool local = s->state == CLIENT_SERVER_LOGIN;

	set_state(s, CLIENT_SPLICING);
	uv_timer_stop(&s->timer);
	session_log(s, LOG_DEBUG, "login complete");
	login_free(s->login);
	s->login = NULL;
	if (local)
		conn_start_reading(&s->cl);
}

/* Plaintext from a leg (decrypted already, if it is TLS). Takes b. */
static void deliver(struct session *s, struct conn *sd, struct block *b, size_t n)
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
	case CLIENT_LOCAL_AUTH:
	case CLIENT_NO_TENANT:
	case CLIENT_ADMIN:
		if (sd == &s->cl)
			local_in(s, b, n);
		else
			block_put(b);
		break;
	case CLIENT_AUTH_RELAY:
	case CLIENT_SERVER_LOGIN:
		if (sd != &s->cl) {
			char why[160];
			bool ok = relay_auth(s, (const uint8_t *)b->data, n, why, sizeof(why));

			block_put(b);
			if (!ok) {
				server_login_lost(s, "08P01", why);
				return;
			}
			if (s->login && s->sv && s->sv->ready &&
			    (s->state == CLIENT_AUTH_RELAY || s->state == CLIENT_SERVER_LOGIN))
				login_complete(s);
		} else if (s->state == CLIENT_SERVER_LOGIN) {
			bool ok = client_gbuf_add(&s->login->lc->held, b->data, n);

			block_put(b);
			if (!ok)
				client_close(s);
		} else {
			if (s->sv->sasl_pending && s->sv->c.tls && s->cl.tls &&
			    !server_check_sasl(s->sv, (const uint8_t *)b->data, n)) {
				block_put(b);
				return;
			}
			if (s->g.on)
				guard_client(s, b, n);
			else
				conn_forward(&s->sv->c, b, n);
		}
		break;
	case CLIENT_SPLICING:
		if (sd == &s->cl)
			link_client_data(s, b, n);
		else
			link_server_data(s, b, n);
		break;
	default:
		/* Connecting (the server's answer to SSLRequest is server.c's), or closing. */
		block_put(b);
		break;
	}
}

/* The client leg's TLS handshake finished: the startup packet comes next. */
static void cl_tls_up(struct conn *c)
{
	struct session *s = c->owner;

	set_state(s, CLIENT_STARTUP);
	roster_set_tls(&s->ro, true);
	s->login->inlen = 0;
	/* PostgreSQL 17 insists on ALPN for direct TLS; so do we. */
	if (s->login->direct_tls && !tls_alpn_is_postgresql(s->cl.tls))
		session_refuse(s, "08P01", "Use a client that negotiates ALPN \"postgresql\".",
			       "direct TLS connection without ALPN");
}

static void cl_tls_fail(struct conn *c)
{
	struct session *s = c->owner;

	session_log(s, LOG_INFO, "client TLS handshake failed: %s", tls_error(c->tls));
	/* The alert, if any, is queued: let it go out. */
	client_drain(s, &s->cl);
}

static void cl_data(struct conn *c, struct block *b, size_t n)
{
	struct session *s = c->owner;

	/* A TLS ClientHello instead of a startup packet: PostgreSQL 17 direct TLS. */
	if (c->tls == NULL && s->state == CLIENT_STARTUP && s->login->inlen == 0 &&
	    (uint8_t)b->data[0] == TLS_RECORD_TYPE_HANDSHAKE && s->rt->cfg->client_tls_ctx) {
		s->login->direct_tls = true;
		if (client_tls_start(s))
			conn_tls_in(c, b, n);
		else
			block_put(b);
		return;
	}
	deliver(s, c, b, n);
}

static void leg_end(struct session *s, struct conn *c, int err)
{
	if (err == UV_ENOBUFS) {
		session_log(s, LOG_ERROR, "out of memory for relay buffers, closing");
		client_close(s);
		return;
	}
	read_end(s, c, err);
}

static void cl_end(struct conn *c, int err)
{
	leg_end(c->owner, c, err);
}

static void cl_send_failed(struct conn *c, int rc)
{
	send_failed(c->owner, c, rc);
}

static void cl_writable(struct conn *c)
{
	link_writable(c->owner, c);
}

static void cl_shutdown(struct conn *c)
{
	client_close(c->owner);
}

static void cl_fatal(struct conn *c, int err)
{
	client_close(c->owner);
}

static const struct conn_ops cl_ops = {
	.on_data = cl_data,
	.on_end = cl_end,
	.on_tls_up = cl_tls_up,
	.on_tls_fail = cl_tls_fail,
	.on_send_failed = cl_send_failed,
	.on_writable = cl_writable,
	.on_shutdown = cl_shutdown,
	.on_fatal = cl_fatal,
	.on_closed = cl_closed,
};

static void sv_fail(struct server *sv, const char *sqlstate, const char *hint, const char *msg)
{
	struct session *s = sv->owner;

	/* A pool's new connection failed: its next clients wait server_login_retry. */
	if (s->login && s->login->pool_slot) {
		snprintf(s->login->pool_state, sizeof(s->login->pool_state), "%s", sqlstate);
		snprintf(s->login->pool_err, sizeof(s->login->pool_err), "%s", msg);
	}
	refuse(s, sqlstate, hint, msg);
}

static void sv_data(struct server *sv, struct block *b, size_t n)
{
	deliver(sv->owner, &sv->c, b, n);
}

static void sv_end(struct server *sv, int err)
{
	leg_end(sv->owner, &sv->c, err);
}

static void sv_send_failed(struct server *sv, int rc)
{
	send_failed(sv->owner, &sv->c, rc);
}

static void sv_writable(struct server *sv)
{
	link_writable(sv->owner, &sv->c);
}

static void sv_shutdown(struct server *sv)
{
	client_close(sv->owner);
}

static void sv_fatal(struct server *sv, int err)
{
	client_close(sv->owner);
}

static const struct server_ops sv_ops = {
	.on_connected = send_startup,
	.on_fail = sv_fail,
	.on_data = sv_data,
	.on_login_msg = sv_login_msg,
	.on_login_rest = sv_login_rest,
	.on_end = sv_end,
	.on_send_failed = sv_send_failed,
	.on_writable = sv_writable,
	.on_shutdown = sv_shutdown,
	.on_fatal = sv_fatal,
};

static const struct session_ops session_up = {
	.set_state = set_state,
	.close = client_close,
	.drain = client_drain,
	.refuse = refuse,
	.connect_tenant = connect_tenant,
	.login_done = login_complete,
	.logout = pooled_logout,
};

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

/* The roster's wake function: the session's loop looks at its marked sessions. */
static void session_wake(void *arg)
{
	if (arg)
		uv_async_send(arg);
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
	s->up = &session_up;
	/* Unique across loops: KILL CLIENT and SHOW CLIENTS name sessions by it. */
	s->id = roster_next_id();
	rt->next_session_id = s->id;
	if (conn_init(&s->cl, rt->loop, &cl_ops, s, true) < 0) {
		log_error("could not set up a socket for a new connection");
		free(s);
		return;
	}
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
	s->ro.id = s->id;
	s->ro.loop = rt->index;
	s->ro.wake = session_wake;
	s->ro.wake_arg = rt->admin_wake;
	s->ro.started_ms = roster_now_ms();
	atomic_init(&s->ro.state, client_state_name(s->state));
	snprintf(s->ro.peer, sizeof(s->ro.peer), "%s", s->peer);
	roster_add(&s->ro);
	s->cl.rx = &s->ro.bytes_in;
	s->cl.tx = &s->ro.bytes_out;
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
	conn_start_reading(&s->cl);
}

size_t client_tenant_sessions(struct router *rt, const void *tenant, size_t len,
                              const char *cluster, const char *end_why, bool force)
{
	struct session *s, *next;
	size_t n = 0;

	for (s = rt->sessions; s; s = next) {
		next = s->next; /* session_refuse frees nothing before its close callbacks */
		if (s->tenant == NULL || s->route[0] || s->closed || s->state == CLIENT_CLOSING)
			continue;
		/* A session that switched tenants (guard = on) may be working for this one. */
		if (tenant && (strlen(s->tenant) != len || memcmp(s->tenant, tenant, len) != 0) &&
		    !(s->g.switched && cluster && strcmp(s->cluster, cluster) == 0))
			continue;
		/*
		 * A spliced session ends between statements: now if it is idle, else
		 * the guard ends it when the client sends its next one; when forced,
		 * at once whatever it does.
		 */
		if (end_why && (force || s->state != CLIENT_SPLICING || spliced_idle(s))) {
			session_refuse(s, "57P01",
			               "Reconnect: new sessions go where the tenant lives now.",
			               "%s", end_why);
			continue;
		}
		if (end_why)
			s->g.end_at_idle = true;
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

/* KILL of a spliced session: a FATAL where the server's stream allows one, else a bare close. */
static void kill_spliced(struct session *s, const char *what)
{
	char msg[128];
	struct block *b;
	size_t len;

	stats_refusal("57P01", s->cluster, s->tenant);
	if (!link_server_at_boundary(s)) {
		client_close(s);
		return;
	}
	drop_server(s);
	snprintf(msg, sizeof(msg), "tenant-router: terminated by the administrator (%s)", what);
	b = conn_error_block("FATAL", "57P01", msg, "An operator ended this session; reconnect.",
			     &len);
	if (b == NULL || conn_send(&s->cl, b, len) < 0) {
		client_close(s);
		return;
	}
	client_drain(s, &s->cl);
}

/*
 * KILL from the console: a FATAL 57P01, as pg_terminate_backend() gives,
 * then close. A spliced session gets it only where the server's stream is
 * between messages (the guard frames it); otherwise it is closed bare, so
 * the client never sees half a message followed by ours.
 */
void client_kill_marked(struct router *rt)
{
	for (struct session *s = rt->sessions, *next; s; s = next) {
		int why = roster_kill_reason(&s->ro);
		const char *what = why == ROSTER_KILL_CLIENT ? "KILL CLIENT" : "KILL TENANT";

		next = s->next;
		if (why == ROSTER_KILL_NONE || s->closed || s->state == CLIENT_CLOSING)
			continue;
		atomic_store(&s->ro.kill, ROSTER_KILL_NONE);
		session_log(s, LOG_INFO, "killed by the admin console (%s)", what);
		if (s->state == CLIENT_SPLICING)
			kill_spliced(s, what);
		else
			session_refuse(s, "57P01", "An operator ended this session; reconnect.",
				       "terminated by the administrator (%s)", what);
	}
}

void client_close_all(struct router *rt)
{
	for (struct session *s = rt->sessions; s; s = s->next)
		client_close(s);
}
