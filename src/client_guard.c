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
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "route.h"
#include "router.h"

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
	if (client_send_copy(s, &s->sv, p, n) < 0) {
		client_send_failed(s, &s->sv, UV_EPIPE);
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
void guard_sent(struct session *s, const uint8_t *p, size_t n)
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
void guard_scan_server(struct session *s, const uint8_t *p, size_t n)
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
void guard_server(struct session *s, struct block *b, size_t n)
{
	struct guard *g = &s->g;
	const uint8_t *p = (const uint8_t *)b->data;
	size_t i = 0, emit = 0;

	if (g->refusals == NULL && g->sheld == 0) {
		guard_scan_server(s, p, n);
		client_forward(s, &s->cl, b, n);
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
			if (client_send_copy(s, &s->cl, p + emit, start - emit) < 0)
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
		if (client_send_copy(s, &s->cl, p + emit, start - emit) < 0)
			goto failed;
		emit = start;
		r = g->refusals;
		if (g->shdr[0] == 'Z' && r && r->sync == g->zs + 1) {
			g->refusals = r->next;
			if (!g->err && client_send_copy(s, &s->cl, r->msg, r->len) < 0) {
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
		if (g->sheld && client_send_copy(s, &s->cl, g->shdr, g->sheld) < 0)
			goto failed;
		g->sheld = 0;
		g->shlen = 0;
	}
	if (!s->closed && client_send_copy(s, &s->cl, p + emit, n - emit) < 0)
		goto failed;
	block_put(b);
	if (!s->closed)
		client_apply_pressure(s, &s->cl);
	return;
failed:
	block_put(b);
	client_send_failed(s, &s->cl, UV_EPIPE);
}

static void guard_refuse(struct session *s, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* Queues the error for a refused statement; the caller sends the Sync standing in for it. */
static void guard_refuse(struct session *s, const char *fmt, ...)
{
	struct guard *g = &s->g;
	char msg[768], hint[256];
	const char *text;
	uint8_t buf[1536];
	struct refusal *r, **pp;
	struct wbuf w;
	va_list ap;

	va_start(ap, fmt);
	text = client_vformat(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(hint, sizeof(hint),
		 "A session stays on the cluster it was routed to (\"%s\"). Open a new "
		 "connection for the other tenant.",
		 s->cluster);
	client_log(s, LOG_INFO, "guard refused a statement: %s", text);
	wb_init(&w, buf, sizeof(buf));
	proto_error_response(&w, "ERROR", GUARD_SQLSTATE, msg, NULL, hint);
	r = malloc(sizeof(*r) + w.len);
	if (r == NULL || w.failed) {
		free(r);
		client_close(s);
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
	q->param = 0;
	q->sources = 0;
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
		if (!local_bind_param(body, blen, &st, val, sizeof(val), &vl)) {
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
void guard_client(struct session *s, struct block *b, size_t n)
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
				if (!client_gbuf_add(&g->hold, p + i, take))
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
			bool ok = client_gbuf_add(&m, g->chdr, 5) && client_gbuf_add(&m, p + i, g->cleft);

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
			if (!client_gbuf_add(&g->hold, g->chdr, 5))
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
		client_forward(s, &s->sv, b, n);
		return;
	}
	if (guard_send(s, p + emit, n - emit))
		client_apply_pressure(s, &s->sv);
out:
	block_put(b);
	return;
oom:
	block_put(b);
	client_close(s);
}

void guard_free(struct guard *g)
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
