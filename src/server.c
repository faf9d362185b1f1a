/*
 * server.c - one connection to a coordinator, from connect to close.
 *
 * Connect (TCP, then an SSLRequest and a TLS handshake when the cluster
 * asks for TLS), then frame the server's messages whole until the login
 * ends: the owner sends the startup packet and decides what each login
 * message means (relayed to the client, or answered by the router's own
 * login). While relaying a client's login, SCRAM-SHA-256-PLUS is removed
 * from AuthenticationSASL (channel binding cannot work through a router
 * that terminates TLS), and BackendKeyData and ParameterStatus are kept:
 * a pooled connection gives them to each client it serves.
 *
 * A server connection needs no client. It calls its owner only through
 * sv->ops; server_close detaches the owner at once, so a connection on its
 * way out never calls anyone back.
 */
#include "server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "conn.h"
#include "log.h"
#include "proto.h"
#include "tls.h"

static struct server *of(struct conn *c)
{
	return container_of(c, struct server, c);
}

static void fail(struct server *sv, const char *sqlstate, const char *hint, const char *fmt, ...)
        PRINTF_LIKE(4, 5);

/* Connecting failed: the owner refuses its client with this (or closes). */
static void fail(struct server *sv, const char *sqlstate, const char *hint, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	if (sv->ops == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	sv->ops->on_fail(sv, sqlstate, hint, msg);
}

/* The server's one-byte answer to our SSLRequest. */
static void ssl_answer(struct server *sv, struct block *b, size_t n)
{
	uint8_t answer = (uint8_t)b->data[0];

	block_put(b);
	/*
	 * An ErrorResponse instead of the answer: the server cannot take us now
	 * (a failed fork, say). Its text comes before any TLS and we do not pass
	 * it on, as libpq no longer shows it (CVE-2024-10977).
	 */
	if (answer == 'E') {
		fail(sv, "08006",
		     "The server could not accept the connection: check its log, then "
		     "retry.",
		     "cluster \"%s\" coordinator %s:%u answered SSLRequest with an error",
		     sv->cluster, sv->target.host, sv->target.port);
		return;
	}
	/* Nothing may follow the answer: bytes here would be injected plaintext. */
	if (n != 1 || (answer != 'S' && answer != 'N')) {
		fail(sv, "08P01", "Check the coordinator's address and TLS settings.",
		     "cluster \"%s\" coordinator %s:%u gave an invalid answer to "
		     "SSLRequest",
		     sv->cluster, sv->target.host, sv->target.port);
		return;
	}
	if (answer == 'N') {
		if (sv->mode == TLS_SERVER_PREFER) {
			sv->phase = SV_LOGIN;
			sv->ops->on_connected(sv);
			return;
		}
		fail(sv, "08006",
		     "Enable ssl on the coordinator, or lower server_tls_mode on the "
		     "router.",
		     "cluster \"%s\" coordinator %s:%u does not accept TLS "
		     "(server_tls_mode = %s)",
		     sv->cluster, sv->target.host, sv->target.port, tls_server_mode_name(sv->mode));
		return;
	}
	if (!conn_tls_start(&sv->c, sv->ctx, false, sv->target.host,
	                    sv->mode == TLS_SERVER_VERIFY_FULL)) {
		fail(sv, "08006", "Retry.", "out of memory for TLS");
		return;
	}
	sv->phase = SV_TLS_HANDSHAKE;
	/* The first step writes our ClientHello. */
	if (tls_handshake(sv->c.tls) == TLS_ERROR || conn_flush_tls(&sv->c) < 0)
		fail(sv, "08006", "Check the coordinator's TLS settings.",
		     "TLS handshake with cluster \"%s\" coordinator failed: %s", sv->cluster,
		     tls_error(sv->c.tls));
}

static void on_data(struct conn *c, struct block *b, size_t n)
{
	struct server *sv = of(c);

	if (sv->ops == NULL) {
		block_put(b);
		return;
	}
	if (sv->phase == SV_SSL_ANSWER) {
		ssl_answer(sv, b, n);
		return;
	}
	sv->ops->on_data(sv, b, n);
}

static void on_end(struct conn *c, int err)
{
	struct server *sv = of(c);

	if (sv->ops)
		sv->ops->on_end(sv, err);
}

/* A TLS handshake finished: log in. */
static void on_tls_up(struct conn *c)
{
	struct server *sv = of(c);

	if (sv->ops == NULL)
		return;
	log_debug("server TLS established host=%s:%u", sv->target.host, sv->target.port);
	sv->phase = SV_LOGIN;
	sv->ops->on_connected(sv);
}

static void on_tls_fail(struct conn *c)
{
	struct server *sv = of(c);

	fail(sv, "08006",
	     "Check the coordinator's certificate and TLS settings "
	     "against server_tls_* on the router.",
	     "TLS handshake with cluster \"%s\" coordinator "
	     "failed: %s",
	     sv->cluster, tls_error(sv->c.tls));
}

static void on_send_failed(struct conn *c, int rc)
{
	struct server *sv = of(c);

	if (sv->ops)
		sv->ops->on_send_failed(sv, rc);
}

static void on_writable(struct conn *c)
{
	struct server *sv = of(c);

	if (sv->ops)
		sv->ops->on_writable(sv);
}

static void on_shutdown(struct conn *c)
{
	struct server *sv = of(c);

	if (sv->ops)
		sv->ops->on_shutdown(sv);
}

static void on_fatal(struct conn *c, int err)
{
	struct server *sv = of(c);

	if (sv->ops)
		sv->ops->on_fatal(sv, err);
}

static void on_closed(struct conn *c)
{
	struct server *sv = of(c);

	conn_release(&sv->c);
	if (sv->ctx)
		tls_ctx_free(sv->ctx);
	free(sv->msg);
	free(sv->params);
	free(sv);
}

static const struct conn_ops server_conn_ops = {
        .on_data = on_data,
        .on_end = on_end,
        .on_tls_up = on_tls_up,
        .on_tls_fail = on_tls_fail,
        .on_send_failed = on_send_failed,
        .on_writable = on_writable,
        .on_shutdown = on_shutdown,
        .on_fatal = on_fatal,
        .on_closed = on_closed,
};

struct server *server_new(uv_loop_t *loop, const struct server_ops *ops, void *owner,
                          const char *cluster, const struct health_target *target, SSL_CTX *ctx,
                          enum tls_server_mode mode, int *rc)
{
	struct server *sv = calloc(1, sizeof(*sv));

	if (sv == NULL) {
		if (ctx)
			tls_ctx_free(ctx);
		*rc = UV_ENOMEM;
		return NULL;
	}
	sv->ops = ops;
	sv->owner = owner;
	snprintf(sv->cluster, sizeof(sv->cluster), "%s", cluster);
	sv->target = *target;
	sv->ctx = ctx;
	sv->mode = mode;
	sv->born_ms = uv_now(loop);
	*rc = conn_init(&sv->c, loop, &server_conn_ops, sv, false);
	if (*rc < 0) {
		if (ctx)
			tls_ctx_free(ctx);
		free(sv);
		return NULL;
	}
	return sv;
}

static void connect_cb(uv_connect_t *req, int status)
{
	static const uint8_t ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
	struct server *sv = req->data;

	if (status == UV_ECANCELED || sv->c.closed || sv->ops == NULL)
		return;
	if (status < 0) {
		fail(sv, "08006",
		     "The coordinator refused or dropped the connection; retry. Health "
		     "checks will mark it down if it stays unreachable.",
		     "could not connect to cluster \"%s\" coordinator %s:%u: %s", sv->cluster,
		     sv->target.host, sv->target.port, uv_strerror(status));
		return;
	}
	uv_tcp_nodelay(&sv->c.tcp, 1);
	if (sv->ctx == NULL) {
		sv->phase = SV_LOGIN;
		sv->ops->on_connected(sv);
		return;
	}
	/* Ask for TLS first; the answer is one byte, 'S' or 'N'. */
	sv->phase = SV_SSL_ANSWER;
	if (conn_send_copy(&sv->c, ssl_request, sizeof(ssl_request)) < 0) {
		fail(sv, "08006", "Retry.", "could not send SSLRequest to cluster \"%s\"",
		     sv->cluster);
		return;
	}
	conn_start_reading(&sv->c);
}

int server_connect(struct server *sv)
{
	sv->phase = SV_TCP;
	sv->connect.data = sv;
	return uv_tcp_connect(&sv->connect, &sv->c.tcp, (const struct sockaddr *)&sv->target.addr,
	                      connect_cb);
}

void server_adopt(struct server *sv, const struct server_ops *ops, void *owner)
{
	sv->ops = ops;
	sv->owner = owner;
}

int server_send_msg(struct server *sv, uint8_t type, const void *body, size_t len)
{
	uint8_t hdr[5];
	int rc;

	proto_msg_header(hdr, type, len);
	rc = conn_send_copy(&sv->c, hdr, sizeof(hdr));
	if (rc == 0 && len)
		rc = conn_send_copy(&sv->c, body, len);
	return rc;
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

/* Keeps a ParameterStatus message (framed), replacing an earlier value of the same name. */
void server_keep_param(struct server *sv, const uint8_t *body, size_t len)
{
	size_t total = 5 + len, off = 0;
	uint8_t *p;
	const char *name = (const char *)body;
	size_t nl = strnlen(name, len);

	if (nl == len || body[len - 1] != '\0')
		return;
	while (off < sv->paramslen) {
		size_t t = 1 + proto_get_u32(sv->params + off + 1);

		if (t - 5 > nl && memcmp(sv->params + off + 5, name, nl + 1) == 0) {
			memmove(sv->params + off, sv->params + off + t, sv->paramslen - off - t);
			sv->paramslen -= t;
			break;
		}
		off += t;
	}
	if (sv->paramslen + total > SERVER_PARAMS_MAX)
		return;
	p = realloc(sv->params, sv->paramslen + total);
	if (p == NULL)
		return;
	sv->params = p;
	proto_msg_header(p + sv->paramslen, 'S', len);
	memcpy(p + sv->paramslen + 5, body, len);
	sv->paramslen += total;
}

const char *server_param(const struct server *sv, const char *name)
{
	size_t nl = strlen(name), off = 0;

	while (off < sv->paramslen) {
		size_t t = 1 + proto_get_u32(sv->params + off + 1);

		if (t - 5 > nl && memcmp(sv->params + off + 5, name, nl + 1) == 0)
			return (const char *)sv->params + off + 5 + nl + 1;
		off += t;
	}
	return NULL;
}

/* One whole server message during login; false stops the framing. */
static bool login_message(struct server *sv, uint8_t type, const uint8_t *body, size_t len)
{
	uint8_t sasl[256];
	size_t n;

	switch (type) {
	case 'R':
		if (!sv->relay)
			break;
		if (len >= 4 && proto_get_u32(body) == 10)
			sv->sasl_pending = true;
		n = len < sizeof(sasl) ? strip_scram_plus(body, len, sasl, sizeof(sasl)) : 0;
		if (n > 0) {
			log_debug("removed SCRAM-SHA-256-PLUS from the server's mechanisms "
			          "host=%s:%u",
			          sv->target.host, sv->target.port);
			return sv->ops->on_login_msg(sv, type, sasl, n);
		}
		break;
	case 'K':
		/* BackendKeyData: pid, then a 4-byte (3.0) to 256-byte (3.2) secret. */
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			break;
		sv->pid = proto_get_u32(body);
		sv->keylen = len - 4;
		memcpy(sv->key, body + 4, len - 4);
		break;
	case 'S':
		if (!sv->got_ready)
			server_keep_param(sv, body, len);
		break;
	case 'E':
		if (sv->relay)
			sv->server_err = true;
		break;
	case 'Z':
		sv->got_ready = true;
		if (sv->relay)
			sv->ready = true;
		break;
	default:
		break;
	}
	return sv->ops->on_login_msg(sv, type, body, len);
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
 * on the router's own login, come the answers to what it sends first.
 */
static bool is_login_message(const struct server *sv, uint8_t type)
{
	if (sv->got_ready)
		return true;
	return type != '\0' && strchr("RKSvNEZ", type) != NULL;
}

/*
 * Judges the header of a server message during login, before any of its
 * body is awaited or buffered. False, with what is wrong in why, for a
 * length that breaks the protocol or our bound, or a type not allowed yet.
 */
static bool login_header_ok(const struct server *sv, char *why, size_t cap)
{
	uint32_t mlen = proto_get_u32(sv->hdr + 1);
	uint8_t type;
	size_t total;
	char tb[8];

	type_text(sv->hdr[0], tb, sizeof(tb));
	if (proto_frame_msg(sv->hdr, sizeof(sv->hdr), SERVER_LOGIN_MSG_MAX, &type, &total) ==
	    PROTO_OK) {
		if (is_login_message(sv, type))
			return true;
		snprintf(why, cap, "a message of unknown type %s before ReadyForQuery", tb);
	} else if (mlen < 4 || mlen > INT32_MAX) {
		snprintf(why, cap, "a message (type %s) with the invalid length %u", tb, mlen);
	} else {
		snprintf(why, cap, "a message (type %s) of %u bytes, over the %u-byte limit", tb,
		         mlen, SERVER_LOGIN_MSG_MAX);
	}
	return false;
}

/*
 * Frames server bytes during login and passes each whole message on. Bytes
 * after the end of the login go on unparsed. A message reaches the owner
 * only once its last byte has come, so whatever breaks, the client has been
 * sent whole messages only and an ErrorResponse can follow them.
 */
bool server_login_bytes(struct server *sv, const uint8_t *p, size_t n, char *why, size_t cap)
{
	for (;;) {
		size_t take;

		if (sv->ops == NULL)
			return true;
		if (sv->hlen < 5) {
			if (n == 0)
				break;
			take = 5 - sv->hlen < n ? 5 - sv->hlen : n;
			memcpy(sv->hdr + sv->hlen, p, take);
			sv->hlen += take;
			p += take;
			n -= take;
			if (sv->hlen < 5)
				break;
			if (!login_header_ok(sv, why, cap))
				return false;
			/* The length counts itself, not the type byte. */
			sv->mlen = proto_get_u32(sv->hdr + 1) - 4;
			sv->blen = 0;
			if (sv->mlen > sv->msgcap) {
				uint8_t *m = realloc(sv->msg, sv->mlen);

				if (m == NULL) {
					fail(sv, "53200", "Retry in a moment.",
					     "out of memory for a %zu-byte message from "
					     "cluster \"%s\"",
					     sv->mlen, sv->cluster);
					return true; /* refused already */
				}
				sv->msg = m;
				sv->msgcap = sv->mlen;
			}
		}
		take = sv->mlen - sv->blen < n ? sv->mlen - sv->blen : n;
		if (take)
			memcpy(sv->msg + sv->blen, p, take);
		sv->blen += take;
		p += take;
		n -= take;
		if (sv->blen < sv->mlen)
			break;
		sv->hlen = 0;
		if (!login_message(sv, sv->hdr[0], sv->msg, sv->mlen))
			return true; /* closing already */
		if (sv->ready) {
			/* What follows the login's ReadyForQuery answers pipelined messages. */
			if (sv->ops)
				sv->ops->on_login_rest(sv, p, n);
			return true;
		}
	}
	return true;
}

/*
 * The client's SASLInitialResponse, when the server leg is TLS. A client on
 * TLS to us that saw no SCRAM-SHA-256-PLUS sends the gs2 flag 'y' ("I could
 * bind, you did not offer it"); a server on TLS takes that for a downgrade
 * attack and refuses. The flag is covered by the client's proof, so we
 * cannot change it: we say clearly what to do instead. Returns false when
 * the session was refused.
 */
bool server_check_sasl(struct server *sv, const uint8_t *p, size_t n)
{
	size_t take = sizeof(sv->cmsg) - sv->clen < n ? sizeof(sv->cmsg) - sv->clen : n;
	struct rd r;
	uint8_t type;
	uint32_t mlen, dlen;
	const char *mech;
	size_t mechlen;
	const uint8_t *flag;

	memcpy(sv->cmsg + sv->clen, p, take);
	sv->clen += take;
	rd_init(&r, sv->cmsg, sv->clen);
	/* Type 'p', length, mechanism name, data length, then the gs2 flag. */
	if (!rd_u8(&r, &type) || !rd_u32(&r, &mlen) || !rd_cstr(&r, &mech, &mechlen) ||
	    !rd_u32(&r, &dlen) || !rd_bytes(&r, 1, &flag)) {
		if (sv->clen == sizeof(sv->cmsg) || (sv->clen >= 1 && type != 'p'))
			sv->sasl_pending = false;
		return true;
	}
	sv->sasl_pending = false;
	if (type != 'p' || flag[0] != 'y')
		return true;
	fail(sv, "28000",
	     "Connect with channel_binding=disable: the router ends your TLS, so SCRAM "
	     "channel binding cannot reach the server, and a TLS server refuses a "
	     "client that says it could bind. Or use server_tls_mode = disable on a "
	     "trusted network.",
	     "SCRAM channel binding cannot pass through the router to cluster \"%s\"", sv->cluster);
	return false;
}

void server_close(struct server *sv)
{
	sv->ops = NULL;
	sv->owner = NULL;
	conn_close(&sv->c);
}
