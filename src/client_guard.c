/*
 * The stickiness guard. A spliced session is bound to one cluster; a
 * statement that sets tenant_key (SET, set_config, a sqlcommenter comment)
 * to a tenant of another cluster must not reach the server.
 *
 * The framing lives in gframe.c (pure, fuzzed): it finds the messages, holds
 * or streams them, and puts each refusal's error in its place in the
 * server's answers. This file gives it what it cannot know by itself: which
 * messages to look at (Query, Parse, and Bind or Close of a statement whose
 * Parse had set_config(key, $n)), the verdict on each (query.c parses the
 * SQL, route.c says whose tenant it names), the errors, and the sockets.
 *
 * Writes go through guard_emit: bytes of the block being framed that pass
 * untouched are gathered as one range, so a block that passes whole is
 * forwarded without a copy, as with the guard off.
 */
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "directory.h"
#include "dirsync.h"
#include "route.h"
#include "router.h"

/*
 * A prepared statement whose Parse had set_config(key, $param), or
 * set_config($key_param, ...) with the setting's name bound later.
 */
struct flagged {
	struct flagged *next;
	int param;
	int key_param, key_value_param;
	char key_value[STARTUP_MAX_TENANT_LEN + 1];
	uint16_t ntypes;
	uint32_t types[8];
	char name[];
};

/* pg_proc's oid of set_config(text, text, boolean), fixed since PostgreSQL 7.3. */
#define OID_SET_CONFIG 2078

/* More statements that set the tenant from a parameter than any client needs. */
#define FLAGGED_MAX 1024

/*
 * Sends n bytes towards dst: during login (server bytes after the login's
 * ReadyForQuery) into the login's gathered output, else as a copy.
 */
static bool guard_write(struct session *s, struct conn *dst, const uint8_t *p, size_t n)
{
	bool ok;

	if (s->closed || dst == NULL)
		return false;
	if (dst == &s->cl && s->login)
		ok = conn_out_put(&s->cl, p, n);
	else
		ok = conn_send_copy(dst, p, n) == 0;
	if (!ok)
		s->g.send_failed = true;
	return ok;
}

/* Sends the bytes of the framed block that passed and wait in [pstart, pend). */
static bool guard_flush(struct session *s, struct conn *dst)
{
	struct guard *g = &s->g;
	const uint8_t *p = g->pstart;
	size_t n = (size_t)(g->pend - g->pstart);

	g->pstart = g->pend = NULL;
	if (n == 0)
		return true;
	g->copied = true;
	return guard_write(s, dst, p, n);
}

/* The framer's output towards dst. */
static bool guard_emit(struct session *s, struct conn *dst, const uint8_t *p, size_t n)
{
	struct guard *g = &s->g;

	if (g->pend != NULL && p == g->pend) {
		g->pend += n;
		return true;
	}
	if (!guard_flush(s, dst))
		return false;
	if (g->base && p >= g->base && p < g->base + g->blen) {
		g->pstart = p;
		g->pend = p + n;
		return true;
	}
	g->copied = true;
	return guard_write(s, dst, p, n);
}

static bool emit_server(void *ctx, const uint8_t *p, size_t n)
{
	struct session *s = ctx;

	return guard_emit(s, session_server_conn(s), p, n);
}

static bool emit_client(void *ctx, const uint8_t *p, size_t n)
{
	struct session *s = ctx;

	return guard_emit(s, &s->cl, p, n);
}

static void guard_refuse(struct session *s, const char *sqlstate, const char *hint,
			 const char *fmt, ...) PRINTF_LIKE(4, 5);

/* Builds the error for a refused statement in s->g.refusal (left NULL when out of memory). */
static void guard_refuse(struct session *s, const char *sqlstate, const char *hint,
			 const char *fmt, ...)
{
	struct guard *g = &s->g;
	char msg[768], dflt[256];
	const char *text;
	uint8_t buf[1536];
	struct wbuf w;
	va_list ap;

	va_start(ap, fmt);
	text = conn_vformat(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (hint == NULL) {
		snprintf(dflt, sizeof(dflt),
			 "A session stays on the cluster it was routed to (\"%s\"). Open a new "
			 "connection for the other tenant.",
			 s->cluster);
		hint = dflt;
	}
	session_log(s, LOG_INFO, "guard refused a statement: %s", text);
	stats_refusal(sqlstate, s->cluster, s->tenant);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", sqlstate, msg, NULL, hint);
	free(g->refusal);
	g->refusal = w.failed ? NULL : gframe_error_new(buf, w.len);
}

/* May this session switch to tenant (len bytes)? Builds the refusal if not. */
static bool guard_allows(struct session *s, const char *tenant, size_t len)
{
	const struct config *cfg = s->rt->cfg;
	struct route_place pl;
	size_t idx;
	const char *owner;

	/*
	 * A statically routed session belongs to no tenant, so no tenant is its
	 * own: whatever guard = on or strict, it may not take one up. That keeps
	 * row-level security keyed on the setting closed there as well.
	 */
	if (s->route[0]) {
		guard_refuse(s, GUARD_SQLSTATE,
			     "Connect with a tenant (and not to this route's database) for tenant "
			     "work.",
			     "this session was routed by [route.%s] and has no tenant; it cannot "
			     "set \"%s\"",
			     s->route, cfg->rule.key);
		return false;
	}
	/* The same placement a new session would get: directory, pins, ring. */
	if (!dirsync_place(s->rt->dir, cfg, tenant, len, &pl) || pl.cluster < 0 ||
	    pl.state == DIR_MOVING || pl.state == DIR_BLOCKED) {
		guard_refuse(s, GUARD_SQLSTATE, NULL,
		             "tenant \"%s\" cannot be switched to now: the tenant directory has it "
		             "%s",
		             tenant,
		             !dirsync_sure(s->rt->dir) ? "out of reach"
		             : pl.state == DIR_MOVING  ? "moving"
		             : pl.state == DIR_BLOCKED ? "blocked"
		                                       : "on a row this router "
		                                         "cannot use");
		return false;
	}
	idx = (size_t)pl.cluster;
	owner = cfg->clusters[idx].name;
	if (strcmp(owner, s->cluster) != 0) {
		guard_refuse(s, GUARD_SQLSTATE, NULL,
			     "tenant \"%s\" belongs to cluster \"%s\"; this session is bound to "
			     "cluster \"%s\"",
			     tenant, owner, s->cluster);
		return false;
	}
	if (s->g.strict && s->tenant && (strlen(s->tenant) != len ||
					 memcmp(s->tenant, tenant, len) != 0)) {
		guard_refuse(s, GUARD_SQLSTATE, NULL,
			     "this session is bound to tenant \"%s\" (guard = strict); it cannot "
			     "switch to tenant \"%s\"",
			     s->tenant, tenant);
		return false;
	}
	if (s->tenant == NULL || strlen(s->tenant) != len || memcmp(s->tenant, tenant, len) != 0)
		s->g.switched = true;
	return true;
}

static void guard_verdict_unknown(struct session *s, const struct query_tenant *q)
{
	if (q->kind == QUERY_CONFLICT)
		guard_refuse(s, GUARD_SQLSTATE, NULL,
			     "the statement names more than one tenant in \"%s\"",
			     s->rt->cfg->rule.key);
	else
		guard_refuse(s, GUARD_SQLSTATE, NULL,
			     "the statement sets \"%s\" to a value the router cannot read; give "
			     "the tenant as a constant",
			     s->rt->cfg->rule.key);
}

/* Does a simple Query EXECUTE a statement the guard has flagged (its Bind is not ours to see)? */
static const struct flagged *guard_executes_flagged(struct session *s, const char *sql,
						    size_t len)
{
	if (!query_mentions(sql, len, "execute", 7))
		return NULL;
	for (const struct flagged *f = s->g.flagged; f; f = f->next) {
		if (f->name[0] && query_mentions(sql, len, f->name, strlen(f->name)))
			return f;
	}
	return NULL;
}

/* Does this SQL switch the tenant? True to forward it. simple: a Query, not a Parse. */
static bool guard_sql(struct session *s, const char *sql, size_t len, bool simple,
		      struct query_tenant *q)
{
	struct query_rule rule = {s->rt->cfg->rule.key, NULL};
	const struct flagged *f;

	q->kind = QUERY_OTHER;
	q->param = 0;
	q->sources = 0;
	q->key_param = 0;
	if (simple && s->g.flagged && (f = guard_executes_flagged(s, sql, len)) != NULL) {
		guard_refuse(s, GUARD_SQLSTATE,
			     "Run that statement through the extended protocol (Bind), where "
			     "the router reads its parameters.",
			     "EXECUTE of prepared statement \"%s\", which sets \"%s\" from a "
			     "parameter",
			     f->name, s->rt->cfg->rule.key);
		return false;
	}
	/* The cheap test first (a parse costs tens of microseconds): the framer's pre-filter. */
	if (!gscan_text(&s->g.f.scan, sql, len))
		return true;
	query_find_tenant(sql, len, &rule, q);
	/*
	 * In a simple Query a parameter can only be PREPAREd, and its EXECUTE
	 * gives the value in SQL the guard would have to tie back: refuse.
	 */
	if (simple && (q->kind == QUERY_PARAM || q->param != 0 || q->key_param != 0)) {
		guard_refuse(s, GUARD_SQLSTATE,
			     "Give the tenant as a constant, or use the extended protocol "
			     "(Parse/Bind), where the router reads parameters.",
			     "the statement prepares a set_config() of \"%s\" from a parameter",
			     s->rt->cfg->rule.key);
		return false;
	}
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

/* Forgets the flags of statement name (Close, or a new unnamed statement). */
static void flagged_drop(struct guard *g, const char *name)
{
	struct flagged **pp = &g->flagged, *f;

	while ((f = *pp) != NULL) {
		if (strcmp(f->name, name) == 0) {
			*pp = f->next;
			free(f);
			g->nflagged--;
		} else {
			pp = &f->next;
		}
	}
}

/* A Parse: look at its SQL; remember it if it takes the tenant from a parameter. */
static bool guard_parse(struct session *s, struct rd *r)
{
	struct guard *g = &s->g;
	const char *name, *sql;
	size_t nl, ql;
	struct query_tenant q;
	struct flagged *f;

	if (!rd_cstr(r, &name, &nl) || !rd_cstr(r, &sql, &ql))
		return true; /* the server will say what is wrong */
	/*
	 * A Parse replaces only the unnamed statement: one that names an
	 * existing statement fails on the server, which keeps the old one, so
	 * its flag must stay (it goes with Close).
	 */
	if (nl == 0)
		flagged_drop(g, name);
	if (!guard_sql(s, sql, ql, false, &q))
		return false;
	if ((q.param == 0 || !(q.sources & QSRC_SET_CONFIG)) && q.key_param == 0)
		return true;
	/* set_config(key, $n): the tenant comes with each Bind of this statement. */
	if (g->nflagged >= FLAGGED_MAX) {
		guard_refuse(s, "54000", "Close prepared statements that set the tenant.",
			     "more than %d prepared statements set \"%s\" from a parameter",
			     FLAGGED_MAX, s->rt->cfg->rule.key);
		return false;
	}
	f = calloc(1, sizeof(*f) + nl + 1);
	if (f == NULL) {
		g->oom = true;
		return false;
	}
	memcpy(f->name, name, nl + 1);
	f->param = (q.sources & QSRC_SET_CONFIG) ? q.param : 0;
	f->key_param = q.key_param;
	f->key_value_param = q.key_value_param;
	memcpy(f->key_value, q.key_value, sizeof(f->key_value));
	if (rd_u16(r, &f->ntypes)) {
		for (uint16_t i = 0; i < f->ntypes && i < ARRAY_SIZE(f->types); i++) {
			if (!rd_u32(r, &f->types[i]))
				break;
		}
	}
	f->next = g->flagged;
	g->flagged = f;
	g->nflagged++;
	return true;
}

/* The text bound for parameter param of a Bind of f's statement; false if unreadable. */
static bool bound_text(const uint8_t *body, size_t blen, const struct flagged *f, int param,
		       char *out, size_t cap, size_t *outlen)
{
	struct xstmt st;

	memset(&st, 0, sizeof(st));
	st.q.param = param;
	st.ntypes = f->ntypes;
	memcpy(st.types, f->types, sizeof(st.types));
	return session_bind_param(body, blen, &st, out, cap, outlen);
}

static bool guard_unreadable_bind(struct session *s)
{
	guard_refuse(s, GUARD_SQLSTATE, NULL,
		     "the value bound for \"%s\" cannot be read as a tenant; bind it as text",
		     s->rt->cfg->rule.key);
	return false;
}

/* A Bind: every flag of its statement must allow the value bound for the tenant. */
static bool guard_bind(struct session *s, const uint8_t *body, size_t blen, struct rd *r)
{
	const char *portal, *name, *key = s->rt->cfg->rule.key;
	size_t pl, nl, vl;
	char val[STARTUP_MAX_TENANT_LEN + 1];

	if (!rd_cstr(r, &portal, &pl) || !rd_cstr(r, &name, &nl))
		return true;
	for (struct flagged *f = s->g.flagged; f; f = f->next) {
		if (strcmp(f->name, name) != 0)
			continue;
		if (f->param) {
			if (!bound_text(body, blen, f, f->param, val, sizeof(val), &vl))
				return guard_unreadable_bind(s);
			if (!guard_allows(s, val, vl))
				return false;
		}
		if (f->key_param == 0)
			continue;
		/*
		 * set_config($k, v): only a name bound as the key makes v the
		 * tenant. A setting's name is text in either format (the binary
		 * form of text is its bytes); PostgreSQL compares names without case.
		 */
		{
			const uint8_t *nm;
			uint32_t nmlen;
			uint16_t fmt;

			if (!proto_bind_param(body, blen, f->key_param, &fmt, &nm, &nmlen))
				continue; /* the server refuses this Bind */
			if (nm == NULL || nmlen != strlen(key) ||
			    strncasecmp((const char *)nm, key, nmlen) != 0)
				continue;
		}
		if (f->key_value_param) {
			if (!bound_text(body, blen, f, f->key_value_param, val, sizeof(val), &vl))
				return guard_unreadable_bind(s);
		} else {
			vl = strlen(f->key_value);
			memcpy(val, f->key_value, vl + 1);
		}
		if (vl > 0 && !guard_allows(s, val, vl))
			return false;
	}
	return true;
}

/*
 * A FunctionCall: the protocol's way to call a function by oid, which
 * skips SQL altogether. set_config(key, value, ...) is judged like SQL.
 */
static bool guard_fcall(struct session *s, struct rd *r)
{
	const char *key = s->rt->cfg->rule.key;
	uint32_t oid;
	uint16_t nfmt, fmt, nargs;
	const uint8_t *arg[2] = {NULL, NULL};
	uint32_t alen[2] = {0, 0};

	if (!rd_u32(r, &oid) || oid != OID_SET_CONFIG || !rd_u16(r, &nfmt))
		return true;
	for (uint16_t i = 0; i < nfmt; i++) {
		if (!rd_u16(r, &fmt))
			return true;
	}
	if (!rd_u16(r, &nargs) || nargs != 3)
		return true; /* the server refuses set_config with other arity */
	for (int i = 0; i < 2; i++) {
		if (!rd_u32(r, &alen[i]))
			return true;
		if (alen[i] == UINT32_MAX) /* NULL */
			continue;
		if (!rd_bytes(r, alen[i], &arg[i]))
			return true;
	}
	if (arg[0] == NULL || alen[0] != strlen(key) || strncasecmp((const char *)arg[0], key,
								     alen[0]) != 0)
		return true;
	if (arg[1] == NULL || alen[1] == 0)
		return true; /* a NULL or empty value: no tenant, as RESET */
	if (alen[1] > STARTUP_MAX_TENANT_LEN || memchr(arg[1], 0, alen[1])) {
		guard_refuse(s, GUARD_SQLSTATE, NULL,
			     "a FunctionCall of set_config() sets \"%s\" to a value that is not "
			     "a tenant",
			     key);
		return false;
	}
	{
		char val[STARTUP_MAX_TENANT_LEN + 1];

		memcpy(val, arg[1], alen[1]);
		val[alen[1]] = '\0';
		return guard_allows(s, val, alen[1]);
	}
}

/* One whole client message (header included) the framer asked about: forward it? */
static bool guard_message(struct session *s, const uint8_t *m, size_t total)
{
	const uint8_t *body = m + 5;
	size_t blen = total - 5;
	struct query_tenant q;
	const char *name;
	size_t nl;
	uint8_t what;
	struct rd r;

	rd_init(&r, body, blen);
	switch (m[0]) {
	case 'Q':
		return guard_sql(s, (const char *)body, strnlen((const char *)body, blen), true,
				 &q);
	case 'P':
		return guard_parse(s, &r);
	case 'B':
		return guard_bind(s, body, blen, &r);
	case 'F':
		return guard_fcall(s, &r);
	case 'C':
		if (rd_u8(&r, &what) && what == 'S' && rd_cstr(&r, &name, &nl))
			flagged_drop(&s->g, name);
		return true;
	default:
		return true;
	}
}

static bool on_wants(void *ctx, uint8_t type)
{
	struct session *s = ctx;

	return type == 'Q' || type == 'P' || type == 'F' ||
	       ((type == 'B' || type == 'C') && s->g.flagged);
}

static enum gframe_verdict on_inspect(void *ctx, const uint8_t *m, size_t len,
				      struct gframe_error **err)
{
	struct session *s = ctx;
	struct guard *g = &s->g;
	bool pass = guard_message(s, m, len);

	*err = g->refusal;
	g->refusal = NULL;
	if (g->oom)
		return GFRAME_FAIL;
	if (pass)
		return GFRAME_PASS;
	return *err ? GFRAME_REFUSE : GFRAME_FAIL;
}

static struct gframe_error *on_overlong(void *ctx, uint8_t type, size_t len)
{
	struct session *s = ctx;
	const struct config *cfg = s->rt->cfg;
	struct gframe_error *e;

	guard_refuse(s, "54000",
		     "The guard reads a statement that may set the tenant whole, up to "
		     "guard_max_statement bytes. Send it in smaller statements, load bulk data with "
		     "COPY, or raise guard_max_statement.",
		     "a %s of %zu bytes that may set \"%s\" is longer than the guard reads "
		     "(guard_max_statement = %zu bytes)",
		     type == 'Q' ? "statement" : "message", len, cfg->rule.key, s->g.f.max_hold);
	e = s->g.refusal;
	s->g.refusal = NULL;
	return e;
}

static const struct gframe_ops guard_ops = {
	.to_server = emit_server,
	.to_client = emit_client,
	.wants = on_wants,
	.inspect = on_inspect,
	.overlong = on_overlong,
};

void guard_init(struct session *s)
{
	const struct config *cfg = s->rt->cfg;
	struct guard *g = &s->g;

	memset(g, 0, sizeof(*g));
	g->on = cfg->guard != GUARD_OFF;
	g->strict = cfg->guard == GUARD_STRICT;
	gframe_init(&g->f, &guard_ops, s, cfg->rule.key, cfg->guard_max_statement, s->rt->held,
		    cfg->guard_max_held);
}

/*
 * Frames n bytes at p towards dst through fn. b: the block p is in (taken),
 * or NULL when p is not in a block (everything then goes as a copy).
 */
static void guard_run(struct session *s, struct conn *dst, struct block *b, const uint8_t *p,
		      size_t n, bool (*fn)(struct gframe *, const uint8_t *, size_t))
{
	struct guard *g = &s->g;
	bool ok;

	g->base = p;
	g->blen = b ? n : 0;
	g->pstart = g->pend = NULL;
	g->copied = g->send_failed = g->oom = false;
	if (b == NULL)
		g->base = NULL;
	ok = fn(&g->f, p, n);
	g->base = NULL;
	if (ok && !s->closed && b && !g->copied && g->pstart == p && g->pend == p + n) {
		/* Passed whole: no copy. */
		g->pstart = g->pend = NULL;
		conn_forward(dst, b, n);
		return;
	}
	if (ok)
		ok = guard_flush(s, dst);
	if (b)
		block_put(b);
	if (s->closed)
		return;
	if (ok) {
		if (!s->login)
			conn_apply_pressure(dst);
	} else if (g->send_failed) {
		conn_send_failed(dst, UV_EPIPE);
	} else {
		session_log(s, LOG_ERROR, "out of memory in the guard; closing the session");
		s->up->close(s);
	}
}

/* Nothing in flight: every Query/Sync answered, no message half through either way. */
static bool guard_idle(const struct guard *g)
{
	const struct gframe *f = &g->f;

	return g->on && !f->blind && !f->sblind && f->syncs == f->zs && f->chlen == 0 &&
	       f->cleft == 0 && f->shlen == 0 && f->sleft == 0 && !f->ehold && f->errors == NULL;
}

void guard_client(struct session *s, struct block *b, size_t n)
{
	/*
	 * The tenant directory's drain (a move): the session ends where the
	 * client starts its next statement, which is then not sent, so the
	 * client never wonders whether it committed.
	 */
	if (s->g.end_at_idle && s->state == CLIENT_SPLICING && guard_idle(&s->g)) {
		block_put(b);
		session_refuse(
		        s, "57P01", "Reconnect: new sessions go where the tenant lives now.",
		        "this session's tenant is being moved to another cluster; the session "
		        "was ended after move_drain_timeout");
		return;
	}
	guard_run(s, session_server_conn(s), b, (const uint8_t *)b->data, n, gframe_client);
}

void guard_server(struct session *s, struct block *b, size_t n)
{
	guard_run(s, &s->cl, b, (const uint8_t *)b->data, n, gframe_server);
}

void guard_client_bytes(struct session *s, const uint8_t *p, size_t n)
{
	guard_run(s, session_server_conn(s), NULL, p, n, gframe_client);
}

void guard_server_bytes(struct session *s, const uint8_t *p, size_t n)
{
	guard_run(s, &s->cl, NULL, p, n, gframe_server);
}

void guard_sent(struct session *s, const uint8_t *p, size_t n)
{
	if (s->g.on)
		gframe_skip(&s->g.f, p, n);
}

void guard_free(struct guard *g)
{
	struct flagged *f;

	while ((f = g->flagged) != NULL) {
		g->flagged = f->next;
		free(f);
	}
	free(g->refusal);
	g->refusal = NULL;
	gframe_free(&g->f);
}
