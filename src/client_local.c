/*
 * Tenant source `query`: no tenant in the startup packet, so no server yet.
 * We check the client's password ourselves (auth_file or auth_query), say
 * AuthenticationOk with a healthy coordinator's ParameterStatus values and
 * a BackendKeyData of our own, and answer SET/RESET/BEGIN/COMMIT/ROLLBACK
 * locally (to replay later) until a statement names the tenant. Then we log
 * in to that tenant's coordinator on the client's behalf, replay, send the
 * held messages in order, and splice.
 */
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "admin.h"
#include "buf.h"
#include "config.h"
#include "router.h"

bool client_gbuf_add(struct gbuf *g, const void *p, size_t n)
{
	if (n == 0)
		return true;
	if (g->len + n > LOCAL_HELD_MAX)
		return false;
	if (g->len + n > g->cap) {
		uint8_t *q = buf_grow(g->p, &g->cap, g->len + n, 256, LOCAL_HELD_MAX);

		if (q == NULL)
			return false;
		g->p = q;
	}
	memcpy(g->p + g->len, p, n);
	g->len += n;
	return true;
}

void local_free(struct local *lc)
{
	if (lc == NULL)
		return;
	health_auth_cancel(lc->aq);
	secret_clear(&lc->secret);
	OPENSSL_cleanse(&lc->ss, sizeof(lc->ss));
	OPENSSL_cleanse(&lc->sc, sizeof(lc->sc));
	free(lc->cin.p);
	free(lc->held.p);
	free(lc->batch.v);
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
	const char *text;
	uint8_t buf[1536];
	struct wbuf w;
	va_list ap;

	va_start(ap, fmt);
	text = conn_vformat(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	session_log(s, LOG_DEBUG, "error sqlstate=%s reason=\"%s\"", sqlstate, text);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", sqlstate, msg, NULL, hint);
	if (!w.failed)
		conn_out_put(&s->cl, buf, w.len);
}

static void send_ready(struct session *s, char txn)
{
	uint8_t t = (uint8_t)txn;

	conn_send_msg(&s->cl, 'Z', &t, 1);
}

static void send_auth_request(struct session *s, uint32_t code, const void *data, size_t n)
{
	uint8_t buf[600];
	struct wbuf w;

	wb_init(&w, buf, sizeof(buf));
	wb_u32(&w, code);
	wb_bytes(&w, data, n);
	if (!w.failed)
		conn_send_msg(&s->cl, 'R', buf, w.len);
}

static void refuse_password(struct session *s)
{
	session_refuse(s, "28P01", "Check the user name and password.",
		      "password authentication failed for user \"%s\"", s->login->lc->user);
}

static void local_process(struct session *s);

/* Our own BackendKeyData for the client: a cancel maps to the server connection in use. */
static bool new_cancel_key(struct session *s)
{
	struct local *lc = s->login->lc;

	if (!auth_random(&lc->pid, sizeof(lc->pid)) || !auth_random(lc->key, sizeof(lc->key))) {
		session_refuse(s, "08006", "Retry.", "no random bytes for a cancel key");
		return false;
	}
	lc->pid = (lc->pid & 0x7fffffffu) | 1u;
	return true;
}

/*
 * pool_mode = session: the client is who it says and its tenant is known.
 * AuthenticationOk went out; the rest of the login (ParameterStatus,
 * BackendKeyData, ReadyForQuery) comes once a server connection is ours.
 */
static void pooled_auth_ok(struct session *s)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	struct startup st;
	const char *why;

	lc->phase = LP_DONE;
	if (!new_cancel_key(s))
		return;
	if (startup_parse(L->in, L->extra_off, &st, &why) != PROTO_OK) {
		s->up->close(s);
		return;
	}
	s->up->set_state(s, CLIENT_ROUTING);
	conn_stop_reading(&s->cl);
	if (!conn_out_flush(&s->cl))
		return;
	session_log(s, LOG_DEBUG, "logged in at the router user=%s, taking a pooled connection",
		    lc->user);
	s->up->connect_tenant(s, &st, &lc->tenant, L->extra_off);
}

/* The admin console's way to its client: the gathered output, sent at once. */
static bool console_send(void *arg, const uint8_t *p, size_t n)
{
	struct session *s = arg;

	/* A client that sends commands and never reads the answers is not kept forever. */
	if (conn_queued(&s->cl) > ADMIN_RESULT_MAX) {
		session_log(s, LOG_WARN, "admin console client does not read its answers, closing");
		s->up->close(s);
		return false;
	}
	return conn_out_put(&s->cl, p, n) && conn_out_flush(&s->cl);
}

static void console_close(void *arg)
{
	struct session *s = arg;

	s->up->drain(s, &s->cl);
}

/* ParameterStatus a console client needs when no coordinator has told us its own. */
static void default_parameters(struct session *s)
{
	static const char *const kv[][2] = {
		{"server_version", "15.0 (tenant-router " TR_VERSION ")"},
		{"server_encoding", "UTF8"},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"integer_datetimes", "on"},
		{"standard_conforming_strings", "on"},
	};
	uint8_t buf[256];
	struct wbuf w;

	for (size_t i = 0; i < ARRAY_SIZE(kv); i++) {
		wb_init(&w, buf, sizeof(buf));
		wb_cstr(&w, kv[i][0]);
		wb_cstr(&w, kv[i][1]);
		if (!w.failed)
			conn_send_msg(&s->cl, 'S', buf, w.len);
	}
}

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

	/* Only admins get the console; who is one is told only after the password. */
	if (s->admin && !config_is_admin(s->rt->cfg, lc->user)) {
		session_refuse(s, "42501", "Add the user to [router] admin_users to give it the console.",
			       "user \"%s\" is not allowed to use the admin console", lc->user);
		return;
	}
	send_auth_request(s, 0, NULL, 0);
	if (lc->pooled) {
		pooled_auth_ok(s);
		return;
	}
	n = health_parameter_status(s->rt->health, buf, sizeof(buf));
	conn_out_put(&s->cl, buf, n);
	if (n == 0 && s->admin)
		default_parameters(s);
	if (startup_parse(L->in, L->extra_off, &st, &why) == PROTO_OK &&
	    (app = startup_get(&st, "application_name")) != NULL) {
		struct wbuf w;

		wb_init(&w, buf, sizeof(buf));
		wb_cstr(&w, "application_name");
		wb_cstr(&w, app->val);
		if (!w.failed)
			conn_send_msg(&s->cl, 'S', buf, w.len);
	}
	if (!auth_random(&lc->pid, sizeof(lc->pid)) || !auth_random(lc->key, sizeof(lc->key))) {
		session_refuse(s, "08006", "Retry.", "no random bytes for a cancel key");
		return;
	}
	lc->pid = (lc->pid & 0x7fffffffu) | 1u;
	proto_put_u32(kd, lc->pid);
	memcpy(kd + 4, lc->key, 4);
	conn_send_msg(&s->cl, 'K', kd, sizeof(kd));
	lc->txn = 'I';
	send_ready(s, lc->txn);
	lc->phase = LP_DONE;
	if (s->admin) {
		struct console_io io = {console_send, console_close, s};

		s->con = console_new(s->rt, lc->user, &io);
		if (s->con == NULL) {
			session_refuse(s, "53200", "Retry.", "out of memory for the admin console");
			return;
		}
		s->up->set_state(s, CLIENT_ADMIN);
		uv_timer_stop(&s->timer);
		session_log(s, LOG_INFO, "admin console login user=%s", lc->user);
		return;
	}
	s->up->set_state(s, CLIENT_NO_TENANT);
	uv_timer_stop(&s->timer);
	session_log(s, LOG_INFO, "logged in at the router user=%s, waiting for the tenant", lc->user);
}

/* Ask for the password, the way the user's secret allows. */
static void local_challenge(struct session *s)
{
	struct local *lc = s->login->lc;
	static const char mechs[] = "SCRAM-SHA-256\0";

	if (s->rt->cfg->auth_type == AUTH_MD5 && lc->secret.kind != SECRET_SCRAM) {
		if (!auth_random(lc->salt, sizeof(lc->salt))) {
			session_refuse(s, "08006", "Retry.", "no random bytes for a salt");
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
		session_refuse(s, "08006", "Check auth_query and the auth_cluster's health connection.",
			      "could not look up user \"%s\" with auth_query: %s", lc->user, why);
		return;
	}
	if (!secret_parse(secret, &lc->secret)) {
		session_refuse(s, "28000", "Check the password stored for this user.",
			      "the secret auth_query returned for user \"%s\" is malformed", lc->user);
		return;
	}
	local_challenge(s);
}

/*
 * NegotiateProtocolVersion, where PostgreSQL sends it (ProcessStartupPacket,
 * before authentication): for a minor version above ours or any _pq_
 * option. We answer this login ourselves and speak 3.0 (our BackendKeyData
 * has a 4-byte key), and know no protocol option, so all are listed.
 */
static void send_negotiate(struct session *s, const struct startup *st)
{
	uint8_t buf[PROTO_MAX_STARTUP_LEN + 8];
	uint32_t n = 0;
	struct wbuf w;

	for (size_t i = 0; i < st->nparams; i++)
		n += strncmp(st->params[i].key, "_pq_.", 5) == 0;
	if (st->minor == 0 && n == 0)
		return;
	wb_init(&w, buf, sizeof(buf));
	wb_u32(&w, (uint32_t)PROTO_V3_MAJOR << 16);
	wb_u32(&w, n);
	for (size_t i = 0; i < st->nparams; i++) {
		if (strncmp(st->params[i].key, "_pq_.", 5) == 0)
			wb_cstr(&w, st->params[i].key);
	}
	if (!w.failed)
		conn_send_msg(&s->cl, 'v', buf, w.len);
}

void local_start_pooled(struct session *s, const struct startup *st, size_t len,
			const struct tenant *t)
{
	struct local *lc = calloc(1, sizeof(*lc));

	if (lc == NULL) {
		s->up->close(s);
		return;
	}
	lc->pooled = true;
	lc->tenant = *t;
	s->login->lc = lc;
	local_start(s, st, len);
}

void local_start(struct session *s, const struct startup *st, size_t len)
{
	struct login *L = s->login;
	const struct config *cfg = s->rt->cfg;
	const struct startup_param *u = startup_get(st, "user"), *d = startup_get(st, "database");
	struct local *lc = L->lc ? L->lc : calloc(1, sizeof(*lc));

	if (lc == NULL) {
		s->up->close(s);
		return;
	}
	L->lc = lc;
	lc->batch.bad.kind = QUERY_OTHER;
	s->up->set_state(s, CLIENT_LOCAL_AUTH);
	send_negotiate(s, st);
	if (u == NULL || u->vlen == 0 || u->vlen >= sizeof(lc->user)) {
		session_refuse(s, "28000", "Give a user name.",
			      "no valid PostgreSQL user name in the startup packet");
		return;
	}
	memcpy(lc->user, u->val, u->vlen + 1);
	/* user=name<sep>tenant: the role is name, as the server sees it. */
	if (lc->pooled && lc->tenant.strip_user) {
		char *sep = memrchr(lc->user, cfg->rule.separator, u->vlen);

		if (sep)
			*sep = '\0';
	}
	snprintf(lc->database, sizeof(lc->database), "%s", d && d->vlen ? d->val : lc->user);
	if (lc->pooled && lc->tenant.strip_database) {
		char *sep = strrchr(lc->database, cfg->rule.separator);

		if (sep)
			*sep = '\0';
	}
	/* Bytes sent after the packet are the client's first messages. */
	L->extra_off = len;
	if (L->inlen > len && !client_gbuf_add(&lc->cin, L->in + len, L->inlen - len)) {
		s->up->close(s);
		return;
	}
	L->inlen = len;
	conn_start_reading(&s->cl);
	if (cfg->auth_type == AUTH_TRUST || (s->admin && cfg->admin_trust)) {
		local_auth_ok(s);
		/* A pooled login may be over already (s->login freed). */
		if (s->login && !s->closed)
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
			session_refuse(s, "08006", "Retry.", "could not start auth_query");
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
		session_refuse(s, "08P01", "Answer the authentication request.",
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
			session_refuse(s, "08P01", "Use a PostgreSQL client.",
				      "malformed SASLInitialResponse");
			return;
		}
		if (strcmp(mech, "SCRAM-SHA-256") != 0) {
			session_refuse(s, "28000", "Use SCRAM-SHA-256 with channel_binding=disable.",
				      "SASL mechanism \"%s\" is not offered", mech);
			return;
		}
		rc = scram_server_first(&lc->ss, &lc->secret, data, dlen, out, sizeof(out), &olen,
					&why);
		if (rc < 0) {
			session_refuse(s, "08P01", "Use a PostgreSQL client.", "SCRAM: %s", why);
			return;
		}
		send_auth_request(s, 11, out, olen);
		lc->phase = LP_SASL_FINAL;
		return;
	}
	case LP_SASL_FINAL:
		rc = scram_server_final(&lc->ss, body, len, out, sizeof(out), &olen, &why);
		if (rc < 0) {
			session_refuse(s, "08P01", "Use a PostgreSQL client.", "SCRAM: %s", why);
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
	session_refuse(s, "08P01", "Use a PostgreSQL client.", "unexpected password message");
}

static void route_query(struct session *s, const char *tenant, size_t tlen);
static bool batch_to_server(struct session *s);

/* Appends a simple Query message with this text to g. */
static bool gbuf_add_query(struct gbuf *g, const char *sql, size_t n)
{
	uint8_t hdr[5], nul = 0;

	proto_msg_header(hdr, 'Q', n + 1);
	return client_gbuf_add(g, hdr, sizeof(hdr)) && client_gbuf_add(g, sql, n) &&
	       client_gbuf_add(g, &nul, 1);
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

	local_rule(s->rt->cfg, &rule);
	query_find_tenant(sql, n, &rule, &q);
	if (q.kind == QUERY_OTHER && q.nstmts == 0) {
		/* Nothing but blanks, comments or semicolons: PostgreSQL's empty-query answer. */
		conn_send_msg(&s->cl, 'I', NULL, 0);
		send_ready(s, lc->txn);
		return;
	}
	if (q.kind == QUERY_TENANT) {
		/* A batch not ended by a Sync goes first, as the server would have run it. */
		if (!batch_to_server(s))
			return;
		lc->qoff = lc->held.len;
		lc->qlen = total;
		if (!client_gbuf_add(&lc->held, msg, total)) {
			session_refuse(s, "54000", "Send smaller messages.", "message too long");
			return;
		}
		route_query(s, q.tenant, q.tenant_len);
		return;
	}
	if (q.kind == QUERY_LOCAL) {
		if (!client_gbuf_add(&lc->replay, msg, total)) {
			session_refuse(s, "54000", "Name the tenant sooner.",
				      "too many statements before the tenant");
			return;
		}
		lc->nreplay++;
		for (size_t i = 0; i < q.nlocal; i++) {
			conn_send_msg(&s->cl, 'C', (const uint8_t *)q.local[i].tag, strlen(q.local[i].tag) + 1);
			if (q.local[i].txn)
				lc->txn = q.local[i].txn;
		}
		send_ready(s, lc->txn);
		return;
	}
	no_tenant_error(s, &q);
	send_ready(s, lc->txn);
}


/* The latest of the first n Parses of a batch that named statement name, or NULL. */
static struct xstmt *xstmt_find(struct xstmt *v, size_t n, const char *name)
{
	while (n-- > 0) {
		if (strcmp(v[n].name, name) == 0)
			return &v[n];
	}
	return NULL;
}

/* Forgets what was learnt about the batch (its messages stay in held). */
static void batch_forget(struct xbatch *b)
{
	free(b->v);
	memset(b, 0, sizeof(*b));
	b->bad.kind = QUERY_OTHER;
}

/* The batch ended with its Sync: nothing of it is held any more. */
static void batch_reset(struct local *lc)
{
	batch_forget(&lc->batch);
	lc->held.len = 0;
}

/* A new entry for a Parse, or NULL when the batch has too many or memory ran out. */
static struct xstmt *batch_new_stmt(struct xbatch *b)
{
	if (b->nv == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 8;
		struct xstmt *v;

		if (b->cap >= BATCH_STMTS_MAX)
			return NULL;
		if (cap > BATCH_STMTS_MAX)
			cap = BATCH_STMTS_MAX;
		v = realloc(b->v, cap * sizeof(*v));
		if (v == NULL)
			return NULL;
		b->v = v;
		b->cap = cap;
	}
	memset(&b->v[b->nv], 0, sizeof(b->v[0]));
	return &b->v[b->nv++];
}

/* The batch names this tenant; naming two is a conflict. */
static void batch_tenant(struct xbatch *b, const char *tenant, size_t len)
{
	if (b->found && (b->tlen != len || memcmp(b->tenant, tenant, len) != 0))
		b->conflict = true;
	memcpy(b->tenant, tenant, len);
	b->tenant[len] = '\0';
	b->tlen = len;
	b->found = true;
}

/*
 * A Parse of the batch (at offset at of held). Each Parse gets its own entry,
 * even when it replaces the unnamed statement: a Bind binds the statement
 * parsed last before it, and each Execute replays its own SQL.
 */
static void batch_parse(struct session *s, struct xbatch *b, size_t at, size_t total)
{
	struct local *lc = s->login->lc;
	const uint8_t *m = lc->held.p + at;
	const char *name, *sql;
	size_t nl, ql;
	struct query_rule rule;
	struct xstmt *st;
	struct rd r;

	rd_init(&r, m + 5, total - 5);
	if (!rd_cstr(&r, &name, &nl) || !rd_cstr(&r, &sql, &ql) || nl >= sizeof(st->name) ||
	    (st = batch_new_stmt(b)) == NULL) {
		b->notlocal = true;
		return;
	}
	memcpy(st->name, name, nl + 1);
	st->off = at;
	st->total = total;
	st->sqloff = (size_t)((const uint8_t *)sql - lc->held.p);
	st->sqllen = ql;
	if (rd_u16(&r, &st->ntypes)) {
		for (uint16_t i = 0; i < st->ntypes && i < ARRAY_SIZE(st->types); i++) {
			if (!rd_u32(&r, &st->types[i]))
				break;
		}
	}
	local_rule(s->rt->cfg, &rule);
	query_find_tenant(sql, ql, &rule, &st->q);
	if (st->q.kind == QUERY_OTHER && st->q.nstmts == 0) {
		st->empty = true;
		return;
	}
	if (st->q.kind == QUERY_TENANT)
		batch_tenant(b, st->q.tenant, st->q.tenant_len);
	if (st->q.kind != QUERY_LOCAL || st->q.nlocal != 1) {
		b->notlocal = true;
		if (st->q.kind != QUERY_PARAM && st->q.kind != QUERY_TENANT)
			b->bad = st->q;
	}
}

/* A Bind of the batch: the tenant, when its statement takes it from a parameter. */
static void batch_bind(struct xbatch *b, const uint8_t *m, size_t total)
{
	const uint8_t *body = m + 5;
	size_t blen = total - 5;
	const char *portal, *name;
	size_t pl, nl, vl;
	char val[STARTUP_MAX_TENANT_LEN + 1];
	struct xstmt *st;
	struct rd r;

	rd_init(&r, body, blen);
	if (!rd_cstr(&r, &portal, &pl) || !rd_cstr(&r, &name, &nl))
		return;
	st = xstmt_find(b->v, b->nv, name);
	/* A $n tenant place, alone or next to a literal (which it must match). */
	if (st == NULL || st->q.param == 0 ||
	    (st->q.kind != QUERY_PARAM && st->q.kind != QUERY_TENANT))
		return;
	if (!session_bind_param(body, blen, st, val, sizeof(val), &vl)) {
		b->bad.kind = QUERY_UNKNOWN;
		return;
	}
	batch_tenant(b, val, vl);
}

/* Looks at the batch's messages not seen yet: does a Parse or a Bind name the tenant? */
static void batch_scan(struct session *s)
{
	struct local *lc = s->login->lc;
	struct xbatch *b = &lc->batch;

	while (b->scanned < lc->held.len) {
		size_t at = b->scanned;
		const uint8_t *m = lc->held.p + at;
		size_t total = 1 + proto_get_u32(m + 1);

		b->scanned += total;
		if (m[0] == 'P')
			batch_parse(s, b, at, total);
		else if (m[0] == 'B')
			batch_bind(b, m, total);
	}
}

/*
 * Answers the batch's messages not answered yet, as PostgreSQL would for a
 * batch of SET/RESET/BEGIN/...: only when every statement in it is one.
 * False when the session was refused.
 */
static bool batch_answer(struct session *s)
{
	static const uint8_t noparams[2] = {0, 0};
	struct local *lc = s->login->lc;
	struct xbatch *b = &lc->batch;
	size_t off = b->done;

	while (off < lc->held.len) {
		const uint8_t *m = lc->held.p + off;
		size_t total = 1 + proto_get_u32(m + 1);
		const char *portal, *name;
		size_t pl, nl;
		struct xstmt *st;
		struct rd r;

		off += total;
		switch (m[0]) {
		case 'P':
			b->parsed++;
			conn_send_msg(&s->cl, '1', NULL, 0);
			break;
		case 'B':
			rd_init(&r, m + 5, total - 5);
			st = rd_cstr(&r, &portal, &pl) && rd_cstr(&r, &name, &nl)
				     ? xstmt_find(b->v, b->parsed, name)
				     : NULL;
			b->cur = st ? (size_t)(st - b->v) + 1 : 0;
			conn_send_msg(&s->cl, '2', NULL, 0);
			break;
		case 'D':
			if (total > 5 && m[5] == 'S')
				conn_send_msg(&s->cl, 't', noparams, sizeof(noparams));
			conn_send_msg(&s->cl, 'n', NULL, 0);
			break;
		case 'E':
			st = b->cur ? &b->v[b->cur - 1] : NULL;
			if (st == NULL || st->empty) {
				conn_send_msg(&s->cl, 'I', NULL, 0);
				break;
			}
			conn_send_msg(&s->cl, 'C', (const uint8_t *)st->q.local[0].tag,
					strlen(st->q.local[0].tag) + 1);
			if (!gbuf_add_query(&lc->replay, (const char *)lc->held.p + st->sqloff,
					    st->sqllen)) {
				session_refuse(s, "54000", "Name the tenant sooner.",
					      "too many statements before the tenant");
				return false;
			}
			lc->nreplay++;
			if (st->q.local[0].txn) {
				/* BEGIN/COMMIT/ROLLBACK: the implicit transaction ends here. */
				lc->txn = st->q.local[0].txn;
				b->replay_mark = lc->replay.len;
				b->nreplay_mark = lc->nreplay;
			}
			break;
		case 'C':
			conn_send_msg(&s->cl, '3', NULL, 0);
			break;
		case 'S':
			send_ready(s, lc->txn);
			break;
		default:
			break;
		}
	}
	b->done = off;
	return true;
}

/*
 * The batch names the tenant: what we have not answered goes to the server.
 * Statements answered at a Flush are unknown there, and the rest of the
 * batch may bind them: each is parsed there first, with a Sync of its own
 * (answered to the replay), after the replayed Queries, since a Query
 * drops the unnamed statement. False when the session was refused.
 */
static bool batch_to_server(struct session *s)
{
	static const uint8_t sync[5] = {'S', 0, 0, 0, 4};
	struct local *lc = s->login->lc;
	struct xbatch *b = &lc->batch;

	for (size_t i = 0; i < b->parsed; i++) {
		const struct xstmt *st = &b->v[i];
		bool replaced = false;

		for (size_t j = i + 1; j < b->parsed && !replaced; j++)
			replaced = strcmp(b->v[j].name, st->name) == 0;
		if (replaced)
			continue;
		if (!client_gbuf_add(&lc->replay, lc->held.p + st->off, st->total) ||
		    !client_gbuf_add(&lc->replay, sync, sizeof(sync))) {
			session_refuse(s, "54000", "Name the tenant sooner.",
				      "too many statements before the tenant");
			return false;
		}
		lc->nreplay++;
	}
	if (b->done > 0) {
		memmove(lc->held.p, lc->held.p + b->done, lc->held.len - b->done);
		lc->held.len -= b->done;
	}
	batch_forget(b);
	return true;
}

/* A Flush or a Sync of an extended-protocol batch before the tenant is known. */
static void no_tenant_batch(struct session *s, bool sync)
{
	struct local *lc = s->login->lc;
	struct xbatch *b = &lc->batch;
	char tenant[STARTUP_MAX_TENANT_LEN + 1];
	size_t tlen;

	batch_scan(s);
	if (b->found && !b->conflict) {
		/* Routed on a Flush too: the server answers it at once. */
		tlen = b->tlen;
		memcpy(tenant, b->tenant, tlen + 1);
		if (batch_to_server(s))
			route_query(s, tenant, tlen);
		return;
	}
	if (!sync) {
		/*
		 * PostgreSQL answers a Flush with what it has done so far. So do
		 * we, when all of it is ours to answer; any other batch waits for
		 * its Sync (a Bind may still name the tenant).
		 */
		if (!b->notlocal)
			(void)batch_answer(s);
		return;
	}
	if (b->notlocal || b->conflict) {
		struct query_tenant bad = b->bad;

		if (b->conflict)
			bad.kind = QUERY_CONFLICT;
		/*
		 * The error ends the batch's implicit transaction, and with it the
		 * SETs answered at a Flush since it began. In a transaction block
		 * they stay, to be undone by its ROLLBACK.
		 */
		if (lc->txn == 'I') {
			lc->replay.len = b->replay_mark;
			lc->nreplay = b->nreplay_mark;
		}
		no_tenant_error(s, &bad);
		send_ready(s, lc->txn);
	} else if (!batch_answer(s)) {
		return;
	}
	batch_reset(lc);
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
		if (lc->held.len == 0) {
			lc->batch.replay_mark = lc->replay.len;
			lc->batch.nreplay_mark = lc->nreplay;
		}
		if (!client_gbuf_add(&lc->held, msg, total)) {
			session_refuse(s, "54000", "Send smaller batches.", "batch too long");
			return;
		}
		if (msg[0] == 'S' || msg[0] == 'H')
			no_tenant_batch(s, msg[0] == 'S');
		break;
	case 'X':
		s->up->drain(s, &s->cl);
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

	while (!s->closed && (s->state == CLIENT_LOCAL_AUTH || s->state == CLIENT_NO_TENANT ||
			      s->state == CLIENT_ADMIN)) {
		const uint8_t *p = lc->cin.p + lc->cin_off;
		size_t n = lc->cin.len - lc->cin_off;
		uint8_t type;
		size_t total;

		if (s->state == CLIENT_LOCAL_AUTH && lc->phase == LP_SECRET)
			return;
		if (n < 5)
			break;
		if (proto_frame_msg(p, n, LOCAL_MSG_MAX, &type, &total) != PROTO_OK) {
			session_refuse(s, "08P01", "Use a PostgreSQL client.",
				      "invalid message length");
			return;
		}
		if (n < total)
			break;
		lc->cin_off += total;
		if (s->state == CLIENT_LOCAL_AUTH)
			local_auth_msg(s, type, p + 5, total - 5);
		else if (s->state == CLIENT_ADMIN)
			console_message(s->con, type, p + 5, total - 5);
		else
			no_tenant_msg(s, p, total);
	}
	if (s->closed || s->state == CLIENT_CLOSING || s->login == NULL)
		return;
	if (lc->cin_off > 0 && (s->state == CLIENT_LOCAL_AUTH || s->state == CLIENT_NO_TENANT ||
				s->state == CLIENT_ADMIN)) {
		memmove(lc->cin.p, lc->cin.p + lc->cin_off, lc->cin.len - lc->cin_off);
		lc->cin.len -= lc->cin_off;
		lc->cin_off = 0;
	}
	conn_out_flush(&s->cl);
}

/* Client bytes while we answer it ourselves. Takes b. */
void local_in(struct session *s, struct block *b, size_t n)
{
	bool ok = client_gbuf_add(&s->login->lc->cin, b->data, n);

	block_put(b);
	if (!ok) {
		session_refuse(s, "54000", "Send smaller messages.", "message too long");
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
	session_refuse(s, sqlstate,
		      "The router logs in to the cluster for clients that route by query: give "
		      "the router and every cluster the same SCRAM verifier for this user, or put "
		      "the password in server_passfile.",
		      "could not log in to cluster \"%s\" as user \"%s\": %s", s->cluster,
		      s->login->lc->user, why);
}

static bool send_to_server(struct session *s, uint8_t type, const void *body, size_t len)
{
	if (server_send_msg(s->sv, type, body, len) < 0) {
		s->up->close(s);
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

/*
 * The held messages go through the guard, as on any spliced session: a
 * switch pipelined behind the routing statement, or in its batch, is
 * refused in its place, and the guard learns the statements of the routing
 * batch that take the tenant from a parameter. A routing simple Query
 * alone goes around it: it was parsed whole to route (the guard would
 * re-judge it the same way, but only up to guard_max_statement). The
 * framer has seen no byte before this, and the replay and its answers go
 * around it, so its counts of Syncs and ReadyForQuery start together here.
 */
static void held_through_guard(struct session *s)
{
	struct local *lc = s->login->lc;
	const uint8_t *p = lc->held.p;
	size_t end = lc->qlen ? lc->qoff : lc->held.len;

	if (end > 0)
		guard_client_bytes(s, p, end);
	if (s->closed || s->state == CLIENT_CLOSING || lc->qlen == 0)
		return;
	if (conn_send_copy(&s->sv->c, p + lc->qoff, lc->qlen) < 0) {
		s->up->close(s);
		return;
	}
	guard_sent(s, p + lc->qoff, lc->qlen);
	end = lc->qoff + lc->qlen;
	if (end < lc->held.len)
		guard_client_bytes(s, p + end, lc->held.len - end);
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
			conn_out_put(&s->cl, buf, w.len);
		}
	}
	if (s->g.on) {
		held_through_guard(s);
	} else if (lc->held.len && conn_send_copy(&s->sv->c, lc->held.p, lc->held.len) < 0) {
		s->up->close(s);
		return;
	}
	if (s->closed || s->state == CLIENT_CLOSING)
		return;
	s->sv->ready = true;
}

/* What the client asked application_name to be ("" when it did not say). */
static const char *client_app_name(struct session *s, char *buf, size_t cap)
{
	struct login *L = s->login;
	const struct startup_param *app;
	struct startup st;
	const char *why;

	buf[0] = '\0';
	if (startup_parse(L->in, L->extra_off, &st, &why) == PROTO_OK &&
	    (app = startup_get(&st, "application_name")) != NULL)
		snprintf(buf, cap, "%s", app->val);
	return buf;
}

/*
 * The pooled connection is set up for the client: the client's login ends
 * as if it had logged in to that server (its ParameterStatus values, our
 * BackendKeyData, ReadyForQuery), then what the client sent meanwhile goes
 * to the server. direct: not inside the server's login framing, so the
 * splice starts here.
 */
static void pooled_done(struct session *s, bool direct)
{
	struct local *lc = s->login->lc;
	struct server *sv = s->sv;
	uint8_t kd[8], idle = 'I';
	size_t off = 0;
	int rc;

	while (off < sv->paramslen) {
		size_t t = 1 + proto_get_u32(sv->params + off + 1);

		if (!conn_out_put(&s->cl, sv->params + off, t))
			return;
		off += t;
	}
	proto_put_u32(kd, lc->pid);
	memcpy(kd + 4, lc->key, 4);
	if (!conn_send_msg(&s->cl, 'K', kd, sizeof(kd)) || !conn_send_msg(&s->cl, 'Z', &idle, 1))
		return;
	rc = cancel_register_mapped(s->rt->cancels, &s->ce, lc->pid, lc->key, sizeof(lc->key),
				    sv->pid, sv->key, sv->keylen,
				    (const struct sockaddr *)&sv->target.addr);
	if (rc < 0)
		session_log(s, LOG_WARN, "could not remember cancel key: %s", uv_strerror(rc));
	s->pooled = true;
	pframe_init(&s->pf);
	sv->ready = true;
	if (!conn_out_flush(&s->cl))
		return;
	session_log(s, LOG_INFO, "logged in user=%s on a pooled connection pid=%u", lc->user,
		    sv->pid);
	if (lc->cin.len > lc->cin_off) {
		link_client_bytes(s, lc->cin.p + lc->cin_off, lc->cin.len - lc->cin_off);
		if (s->closed || s->state == CLIENT_CLOSING)
			return;
	}
	if (direct)
		s->up->login_done(s);
}

/* A SET of application_name in a dollar quote the value cannot end. */
static bool app_name_set(const char *v, char *out, size_t cap)
{
	const char *tag = "tr";
	int n;

	if (strstr(v, "$tr$"))
		tag = "tr_app_name_";
	if (strstr(v, "$tr_app_name_$"))
		return false;
	n = snprintf(out, cap, "SET application_name = $%s$%s$%s$", tag, v, tag);
	return n > 0 && (size_t)n < cap;
}

void local_pooled_attach(struct session *s)
{
	struct local *lc = s->login->lc;
	const char *have = server_param(s->sv, "application_name");
	char want[256], sql[700];

	client_app_name(s, want, sizeof(want));
	lc->server_ready = true;
	if (have && strcmp(have, want) == 0) {
		pooled_done(s, true);
		return;
	}
	if (!app_name_set(want, sql, sizeof(sql))) {
		session_refuse(s, "22023", "Use another application_name.",
			       "application_name \"%s\" cannot be set", want);
		return;
	}
	lc->replay_left = 1;
	if (server_send_msg(s->sv, 'Q', sql, strlen(sql) + 1) < 0)
		s->up->close(s);
}

/* A message on a pooled connection while the router logs in or sets it up for the client. */
static bool pooled_server_message(struct session *s, uint8_t type, const uint8_t *body,
				  size_t len)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	struct proto_error_fields f;

	switch (type) {
	case 'R':
		if (!server_auth_request(s, body, len))
			server_login_failed(s, "08P01", "malformed authentication request");
		return true;
	case 'S':
		/* Kept by server.c during the login; later ones are answers to our SET. */
		if (lc->server_ready)
			server_keep_param(s->sv, body, len);
		return true;
	case 'E':
		if (proto_parse_error(body, len, &f) != PROTO_OK)
			f.message = f.sqlstate = NULL;
		if (lc->server_ready) {
			/* Our SET failed: the connection is not what the client asked for. */
			s->sv->dirty = true;
			session_refuse(s, "08006", "Retry.",
				       "setting up a pooled connection to cluster \"%s\" failed: %s",
				       s->cluster, f.message ? f.message : "?");
			return true;
		}
		snprintf(L->pool_state, sizeof(L->pool_state), "%s",
			 f.sqlstate && strlen(f.sqlstate) == 5 ? f.sqlstate : "08006");
		snprintf(L->pool_err, sizeof(L->pool_err),
			 "cluster \"%s\" refused the login of user \"%s\": %s", s->cluster,
			 lc->user, f.message ? f.message : "?");
		session_refuse(s, L->pool_state,
			       "The router logs in to the cluster for pooled clients.", "%s",
			       L->pool_err);
		return true;
	case 'Z':
		if (!lc->server_ready) {
			/* A new connection has logged in: it is the pool's from now on. */
			lc->server_ready = true;
			L->pool_slot = false;
			if (s->preq.pool)
				pool_adopt(s->preq.pool, s->sv);
			pooled_done(s, false);
			return true;
		}
		if (--lc->replay_left == 0)
			pooled_done(s, false);
		return true;
	default:
		/* BackendKeyData is kept by server.c; notices and CommandComplete go. */
		return true;
	}
}

/* One message from the server while we log in for the client and replay. */
bool local_server_message(struct session *s, uint8_t type, const uint8_t *body, size_t len)
{
	struct login *L = s->login;
	struct local *lc = L->lc;
	struct proto_error_fields f;
	int rc;

	if (lc->pooled)
		return pooled_server_message(s, type, body, len);
	switch (type) {
	case 'R':
		if (!server_auth_request(s, body, len))
			server_login_failed(s, "08P01", "malformed authentication request");
		return true;
	case 'S':
	case 'N':
		return conn_send_msg(&s->cl, type, body, len);
	case 'K':
		if (len < 8 || len > 4 + PROTO_MAX_CANCEL_KEY)
			return true;
		rc = cancel_register_mapped(s->rt->cancels, &s->ce, lc->pid, lc->key,
					    sizeof(lc->key), proto_get_u32(body), body + 4, len - 4,
					    (const struct sockaddr *)&L->target.addr);
		if (rc < 0)
			session_log(s, LOG_WARN, "could not remember cancel key: %s", uv_strerror(rc));
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
		session_refuse(s, f.sqlstate && strlen(f.sqlstate) == 5 ? f.sqlstate : "08006",
			      "The router logs in to the cluster for clients that route by query.",
			      "cluster \"%s\" refused the login of user \"%s\": %s", s->cluster,
			      lc->user, f.message ? f.message : "?");
		return true;
	case 'Z':
		if (!lc->server_ready) {
			lc->server_ready = true;
			session_log(s, LOG_DEBUG, "logged in to the server, replaying %u statements",
			     lc->nreplay);
			if (lc->nreplay > 0) {
				lc->replay_left = lc->nreplay;
				if (conn_send_copy(&s->sv->c, lc->replay.p, lc->replay.len) < 0) {
					s->up->close(s);
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

	/* Whatever the client sent after this goes to the server after it, through the guard. */
	if (!client_gbuf_add(&lc->held, lc->cin.p + lc->cin_off, lc->cin.len - lc->cin_off)) {
		session_refuse(s, "54000", "Send smaller messages.", "message too long");
		return;
	}
	lc->cin.len = lc->cin_off = 0;
	memset(&t, 0, sizeof(t));
	memcpy(t.name, tenant, tlen);
	t.name[tlen] = '\0';
	t.len = tlen;
	t.source = TENANT_SRC_QUERY;
	if (startup_parse(L->in, L->extra_off, &st, &why) != PROTO_OK) {
		s->up->close(s);
		return;
	}
	s->up->set_state(s, CLIENT_ROUTING);
	conn_stop_reading(&s->cl);
	conn_out_flush(&s->cl);
	s->login_deadline = uv_now(s->rt->loop) + s->rt->cfg->client_login_timeout_ms;
	s->up->connect_tenant(s, &st, &t, L->extra_off);
}
