/*
 * admin.c - the admin console's statements and the wire messages of its
 * replies (pure: no I/O, no event loop).
 *
 * The language is small on purpose: a handful of fixed command shapes
 * (see admin_help()), read with a tokenizer that knows words, numbers,
 * 'string literals' (with '' for a quote, as in SQL), "quoted identifiers"
 * and a final ';'. It never executes anything; the console (console.c)
 * does. Every refusal says what was expected and how to write it.
 *
 * The reply builder writes the messages psql needs to print a table:
 * RowDescription with text columns (type oid 25, so -A -t and \x work),
 * DataRow, CommandComplete, ReadyForQuery. Its buffer is bounded.
 */
#include "admin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "proto.h"

enum tok_kind { TOK_END, TOK_WORD, TOK_STRING, TOK_QIDENT, TOK_SEMI, TOK_BAD };

struct tok {
	enum tok_kind kind;
	char text[ADMIN_MAX_TENANT + 2]; /* unquoted; cut tokens are marked long */
	size_t len;
	bool toolong;
	const char *at; /* where it starts in the statement, for messages */
	size_t atlen;
};

struct lexer {
	const char *p, *end;
};

static bool is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_word_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-';
}

static void tok_put(struct tok *t, char c)
{
	if (t->len < sizeof(t->text) - 1)
		t->text[t->len++] = c;
	else
		t->toolong = true;
}

/* A quoted token: q is ' or "; a doubled q is one q. */
static void lex_quoted(struct lexer *lx, struct tok *t, char q)
{
	lx->p++;
	for (;;) {
		if (lx->p == lx->end) {
			t->kind = TOK_BAD; /* unterminated */
			return;
		}
		if (*lx->p == q) {
			if (lx->end - lx->p >= 2 && lx->p[1] == q) {
				tok_put(t, q);
				lx->p += 2;
				continue;
			}
			lx->p++;
			return;
		}
		if (*lx->p == '\0') {
			t->kind = TOK_BAD;
			return;
		}
		tok_put(t, *lx->p++);
	}
}

static void lex(struct lexer *lx, struct tok *t)
{
	memset(t, 0, sizeof(*t));
	while (lx->p < lx->end && is_blank(*lx->p))
		lx->p++;
	t->at = lx->p;
	if (lx->p == lx->end) {
		t->kind = TOK_END;
	} else if (*lx->p == ';') {
		t->kind = TOK_SEMI;
		lx->p++;
	} else if (*lx->p == '\'') {
		t->kind = TOK_STRING;
		lex_quoted(lx, t, '\'');
	} else if (*lx->p == '"') {
		t->kind = TOK_QIDENT;
		lex_quoted(lx, t, '"');
	} else if (is_word_char(*lx->p)) {
		t->kind = TOK_WORD;
		while (lx->p < lx->end && is_word_char(*lx->p))
			tok_put(t, *lx->p++);
	} else {
		t->kind = TOK_BAD;
		lx->p++;
	}
	t->text[t->len] = '\0';
	t->atlen = (size_t)(lx->p - t->at);
}

static bool is_kw(const struct tok *t, const char *kw)
{
	return t->kind == TOK_WORD && !t->toolong && strcasecmp(t->text, kw) == 0;
}

static void set_error(struct admin_error *e, const char *hint, const char *fmt, ...)
        PRINTF_LIKE(3, 4);

static void set_error(struct admin_error *e, const char *hint, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	snprintf(e->hint, sizeof(e->hint), "%s", hint);
}

/* "at or near ..." of a token, printable and short. */
static void near(const struct tok *t, char *out, size_t cap)
{
	size_t n = 0;

	if (t->kind == TOK_END) {
		snprintf(out, cap, "at end of input");
		return;
	}
	n = (size_t)snprintf(out, cap, "at or near \"");
	for (size_t i = 0; i < t->atlen && i < 40 && n + 6 < cap; i++) {
		unsigned char c = (unsigned char)t->at[i];

		out[n++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
	}
	if (t->atlen > 40 && n + 5 < cap) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	if (n + 1 < cap)
		out[n++] = '"';
	out[n < cap ? n : cap - 1] = '\0';
}

static bool syntax(struct admin_error *e, const struct tok *t, const char *hint)
{
	char where[64];

	near(t, where, sizeof(where));
	set_error(e, hint, "syntax error %s", where);
	return false;
}

static const struct admin_help help[] = {
        {"SHOW CLUSTERS", "clusters: state, writer, sessions, routed, refusals"},
        {"SHOW HOSTS", "hosts as the health checkers see them"},
        {"SHOW CLIENTS", "client sessions on every event loop"},
        {"SHOW TENANTS", "tenants with live sessions and where they go"},
        {"SHOW STATS", "totals since start and rates"},
        {"SHOW CONFIG", "settings: value, default, reloadable"},
        {"SHOW VERSION", "the router's version"},
        {"SHOW HELP", "this list"},
        {"ROUTE 'tenant'", "where a new session of the tenant goes"},
        {"PIN 'tenant' TO cluster [FORCE]",
         "pin in the pins file (FORCE: even with live sessions)"},
        {"UNPIN 'tenant' [FORCE]", "remove a pin from the pins file"},
        {"PAUSE TENANT 'tenant'", "new sessions of the tenant wait (up to pause_timeout)"},
        {"RESUME TENANT 'tenant'", "let the tenant's waiting sessions go on"},
        {"KILL TENANT 'tenant'", "end the tenant's sessions (FATAL 57P01)"},
        {"KILL CLIENT id", "end one session (id from SHOW CLIENTS)"},
        {"RELOAD", "reload the configuration (as SIGHUP)"},
        {"SHUTDOWN", "stop gracefully (as SIGTERM)"},
};

const struct admin_help *admin_help(size_t *n)
{
	*n = ARRAY_SIZE(help);
	return help;
}

const char *admin_cmd_tag(enum admin_cmd cmd)
{
	switch (cmd) {
	case ADMIN_EMPTY:
		return "";
	case ADMIN_SHOW_CLUSTERS:
	case ADMIN_SHOW_HOSTS:
	case ADMIN_SHOW_CLIENTS:
	case ADMIN_SHOW_TENANTS:
	case ADMIN_SHOW_STATS:
	case ADMIN_SHOW_CONFIG:
	case ADMIN_SHOW_VERSION:
	case ADMIN_SHOW_HELP:
		return "SHOW";
	case ADMIN_ROUTE:
		return "ROUTE";
	case ADMIN_PIN:
		return "PIN";
	case ADMIN_UNPIN:
		return "UNPIN";
	case ADMIN_PAUSE:
		return "PAUSE";
	case ADMIN_RESUME:
		return "RESUME";
	case ADMIN_KILL_TENANT:
	case ADMIN_KILL_CLIENT:
		return "KILL";
	case ADMIN_RELOAD:
		return "RELOAD";
	case ADMIN_SHUTDOWN:
		return "SHUTDOWN";
	}
	return "";
}

/* A tenant literal: 'text', 1 to ADMIN_MAX_TENANT bytes. */
static bool want_tenant(struct lexer *lx, struct admin_stmt *st, struct admin_error *e,
                        const char *usage)
{
	struct tok t;

	lex(lx, &t);
	if (t.kind == TOK_BAD && t.at < lx->end && *t.at == '\'') {
		set_error(e, usage, "unterminated string literal");
		return false;
	}
	if (t.kind != TOK_STRING) {
		char hint[320];

		snprintf(hint, sizeof(hint), "Quote the tenant as a string literal: %s", usage);
		return syntax(e, &t, hint);
	}
	if (t.toolong || t.len > ADMIN_MAX_TENANT) {
		set_error(e, usage, "a tenant is at most %d bytes", ADMIN_MAX_TENANT);
		return false;
	}
	if (t.len == 0) {
		set_error(e, usage, "the tenant is empty");
		return false;
	}
	memcpy(st->tenant, t.text, t.len + 1);
	st->tlen = t.len;
	return true;
}

static bool want_cluster(struct lexer *lx, struct admin_stmt *st, struct admin_error *e,
                         const char *usage)
{
	struct tok t;

	lex(lx, &t);
	if (t.kind != TOK_WORD && t.kind != TOK_QIDENT && t.kind != TOK_STRING)
		return syntax(e, &t, usage);
	if (t.toolong || t.len == 0 || t.len > ADMIN_MAX_CLUSTER) {
		set_error(e, usage, "a cluster name is 1 to %d characters", ADMIN_MAX_CLUSTER);
		return false;
	}
	memcpy(st->cluster, t.text, t.len + 1);
	return true;
}

static bool want_id(struct lexer *lx, struct admin_stmt *st, struct admin_error *e,
                    const char *usage)
{
	struct tok t;
	uint64_t v = 0;

	lex(lx, &t);
	if (t.kind != TOK_WORD || t.toolong || t.len > 19)
		return syntax(e, &t, usage);
	for (size_t i = 0; i < t.len; i++) {
		if (t.text[i] < '0' || t.text[i] > '9')
			return syntax(e, &t, usage);
		v = v * 10 + (uint64_t)(t.text[i] - '0');
	}
	st->id = v;
	return true;
}

/* Optional FORCE, then the end: ';' and nothing after it. */
static bool want_end(struct lexer *lx, struct admin_stmt *st, struct admin_error *e, bool force_ok,
                     const char *usage)
{
	struct tok t;

	lex(lx, &t);
	if (force_ok && is_kw(&t, "force")) {
		st->force = true;
		lex(lx, &t);
	}
	if (t.kind == TOK_SEMI)
		lex(lx, &t);
	if (t.kind == TOK_END)
		return true;
	return syntax(e, &t, usage);
}

static bool parse_show(struct lexer *lx, struct admin_stmt *st, struct admin_error *e)
{
	static const struct {
		const char *kw;
		enum admin_cmd cmd;
	} what[] = {
	        {"clusters", ADMIN_SHOW_CLUSTERS}, {"hosts", ADMIN_SHOW_HOSTS},
	        {"clients", ADMIN_SHOW_CLIENTS},   {"tenants", ADMIN_SHOW_TENANTS},
	        {"stats", ADMIN_SHOW_STATS},       {"config", ADMIN_SHOW_CONFIG},
	        {"version", ADMIN_SHOW_VERSION},   {"help", ADMIN_SHOW_HELP},
	};
	static const char usage[] =
	        "SHOW CLUSTERS, HOSTS, CLIENTS, TENANTS, STATS, CONFIG, VERSION or HELP.";
	struct tok t;

	lex(lx, &t);
	for (size_t i = 0; i < ARRAY_SIZE(what); i++) {
		if (is_kw(&t, what[i].kw)) {
			st->cmd = what[i].cmd;
			return want_end(lx, st, e, false, usage);
		}
	}
	if (t.kind == TOK_WORD && !t.toolong) {
		set_error(e, usage, "unknown SHOW item \"%.64s\"", t.text);
		return false;
	}
	return syntax(e, &t, usage);
}

bool admin_parse(const char *sql, size_t len, struct admin_stmt *st, struct admin_error *e)
{
	static const char pin_usage[] = "PIN 'tenant' TO cluster [FORCE]";
	static const char unpin_usage[] = "UNPIN 'tenant' [FORCE]";
	struct lexer lx = {sql, sql + len};
	struct tok t;

	memset(st, 0, sizeof(*st));
	memset(e, 0, sizeof(*e));
	if (len > ADMIN_MAX_STATEMENT) {
		set_error(e, "SHOW HELP lists the commands.",
		          "statement too long (%zu bytes; console commands are short)", len);
		return false;
	}
	lex(&lx, &t);
	if (t.kind == TOK_END || t.kind == TOK_SEMI) {
		while (t.kind == TOK_SEMI)
			lex(&lx, &t);
		if (t.kind != TOK_END)
			return syntax(e, &t, "Send one command per query; SHOW HELP lists them.");
		st->cmd = ADMIN_EMPTY;
		return true;
	}
	if (is_kw(&t, "show"))
		return parse_show(&lx, st, e);
	if (is_kw(&t, "route")) {
		st->cmd = ADMIN_ROUTE;
		return want_tenant(&lx, st, e, "ROUTE 'tenant'") &&
		       want_end(&lx, st, e, false, "ROUTE 'tenant'");
	}
	if (is_kw(&t, "pin")) {
		st->cmd = ADMIN_PIN;
		if (!want_tenant(&lx, st, e, pin_usage))
			return false;
		lex(&lx, &t);
		if (!is_kw(&t, "to"))
			return syntax(e, &t, pin_usage);
		return want_cluster(&lx, st, e, pin_usage) && want_end(&lx, st, e, true, pin_usage);
	}
	if (is_kw(&t, "unpin")) {
		st->cmd = ADMIN_UNPIN;
		return want_tenant(&lx, st, e, unpin_usage) &&
		       want_end(&lx, st, e, true, unpin_usage);
	}
	if (is_kw(&t, "pause") || is_kw(&t, "resume")) {
		bool pause = is_kw(&t, "pause");
		const char *usage = pause ? "PAUSE TENANT 'tenant'" : "RESUME TENANT 'tenant'";

		st->cmd = pause ? ADMIN_PAUSE : ADMIN_RESUME;
		lex(&lx, &t);
		if (!is_kw(&t, "tenant"))
			return syntax(e, &t, usage);
		return want_tenant(&lx, st, e, usage) && want_end(&lx, st, e, false, usage);
	}
	if (is_kw(&t, "kill")) {
		static const char usage[] = "KILL TENANT 'tenant' or KILL CLIENT id";

		lex(&lx, &t);
		if (is_kw(&t, "tenant")) {
			st->cmd = ADMIN_KILL_TENANT;
			return want_tenant(&lx, st, e, "KILL TENANT 'tenant'") &&
			       want_end(&lx, st, e, false, "KILL TENANT 'tenant'");
		}
		if (is_kw(&t, "client")) {
			st->cmd = ADMIN_KILL_CLIENT;
			return want_id(&lx, st, e, "KILL CLIENT id (a number from SHOW CLIENTS)") &&
			       want_end(&lx, st, e, false, "KILL CLIENT id");
		}
		return syntax(e, &t, usage);
	}
	if (is_kw(&t, "reload")) {
		st->cmd = ADMIN_RELOAD;
		return want_end(&lx, st, e, false, "RELOAD");
	}
	if (is_kw(&t, "shutdown")) {
		st->cmd = ADMIN_SHUTDOWN;
		return want_end(&lx, st, e, false, "SHUTDOWN");
	}
	if (t.kind == TOK_WORD && !t.toolong) {
		set_error(e, "SHOW HELP lists the commands.", "unknown command \"%.64s\"", t.text);
		return false;
	}
	return syntax(e, &t, "SHOW HELP lists the commands.");
}

bool admin_tenant_is_pinnable(const char *t, size_t len)
{
	if (len == 0 || len > ADMIN_MAX_TENANT)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)t[i];

		if (c < 0x20 || c == 0x7f || c == ' ' || c == '#')
			return false;
	}
	return true;
}

/* --- the reply ------------------------------------------------------------------------------ */

void admin_result_init(struct admin_result *r)
{
	memset(r, 0, sizeof(*r));
}

void admin_result_free(struct admin_result *r)
{
	free(r->p);
	memset(r, 0, sizeof(*r));
}

void admin_result_reset(struct admin_result *r)
{
	r->len = 0;
	r->ncols = 0;
	r->rows = 0;
	r->failed = false;
}

static bool reserve(struct admin_result *r, size_t n)
{
	uint8_t *p;

	if (r->failed)
		return false;
	if (n <= r->cap - r->len)
		return true;
	if (n > ADMIN_RESULT_MAX - r->len) {
		r->failed = true;
		return false;
	}
	p = buf_grow(r->p, &r->cap, r->len + n, 1024, ADMIN_RESULT_MAX);
	if (p == NULL) {
		r->failed = true;
		return false;
	}
	r->p = p;
	return true;
}

static void put(struct admin_result *r, const void *p, size_t n)
{
	if (n && reserve(r, n)) {
		memcpy(r->p + r->len, p, n);
		r->len += n;
	}
}

static void put_u16(struct admin_result *r, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	put(r, b, 2);
}

static void put_u32(struct admin_result *r, uint32_t v)
{
	uint8_t b[4];

	proto_put_u32(b, v);
	put(r, b, 4);
}

static void put_cstr(struct admin_result *r, const char *s)
{
	put(r, s, strlen(s) + 1);
}

/* Starts a message; returns where its length goes (patched by msg_end). */
static size_t msg_begin(struct admin_result *r, uint8_t type)
{
	size_t at;

	put(r, &type, 1);
	at = r->len;
	put_u32(r, 0);
	return at;
}

static void msg_end(struct admin_result *r, size_t at)
{
	if (r->failed)
		return;
	if (r->len - at > UINT32_MAX / 2) {
		r->failed = true;
		return;
	}
	proto_put_u32(r->p + at, (uint32_t)(r->len - at));
}

void admin_result_columns(struct admin_result *r, const char *const *names, size_t n)
{
	size_t at;

	TR_ASSERT(n > 0 && n <= ADMIN_MAX_COLUMNS);
	at = msg_begin(r, 'T');
	put_u16(r, (uint16_t)n);
	for (size_t i = 0; i < n; i++) {
		put_cstr(r, names[i]);
		put_u32(r, 0);           /* table oid */
		put_u16(r, 0);           /* column number */
		put_u32(r, 25);          /* type oid: text */
		put_u16(r, 0xffff);      /* typlen -1: variable */
		put_u32(r, 0xffffffffu); /* typmod -1 */
		put_u16(r, 0);           /* format: text */
	}
	msg_end(r, at);
	r->ncols = n;
	r->rows = 0;
}

void admin_result_row(struct admin_result *r, const char *const *vals)
{
	size_t at;

	TR_ASSERT(r->ncols > 0);
	at = msg_begin(r, 'D');
	put_u16(r, (uint16_t)r->ncols);
	for (size_t i = 0; i < r->ncols; i++) {
		size_t n;

		if (vals[i] == NULL) {
			put_u32(r, 0xffffffffu);
			continue;
		}
		n = strlen(vals[i]);
		put_u32(r, (uint32_t)(n > ADMIN_RESULT_MAX ? ADMIN_RESULT_MAX : n));
		put(r, vals[i], n);
	}
	msg_end(r, at);
	r->rows++;
}

void admin_result_complete(struct admin_result *r, const char *tag)
{
	char buf[64];
	size_t at;

	if (strcmp(tag, "SHOW") == 0)
		snprintf(buf, sizeof(buf), "SHOW %llu", (unsigned long long)r->rows);
	else
		snprintf(buf, sizeof(buf), "%s", tag);
	at = msg_begin(r, 'C');
	put_cstr(r, buf);
	msg_end(r, at);
	r->ncols = 0;
	r->rows = 0;
}

void admin_result_empty_query(struct admin_result *r)
{
	msg_end(r, msg_begin(r, 'I'));
}

static void error_fields(struct admin_result *r, uint8_t type, const char *severity,
                         const char *sqlstate, const char *message, const char *hint)
{
	size_t at = msg_begin(r, type);

	put(r, "S", 1);
	put_cstr(r, severity);
	put(r, "V", 1);
	put_cstr(r, severity);
	put(r, "C", 1);
	put_cstr(r, sqlstate);
	put(r, "M", 1);
	put(r, "tenant-router: ", 15);
	put_cstr(r, message);
	if (hint && *hint) {
		put(r, "H", 1);
		put_cstr(r, hint);
	}
	put(r, "", 1);
	msg_end(r, at);
}

void admin_result_error(struct admin_result *r, const char *sqlstate, const char *message,
                        const char *hint)
{
	error_fields(r, 'E', "ERROR", sqlstate, message, hint);
	r->ncols = 0;
	r->rows = 0;
}

void admin_result_notice(struct admin_result *r, const char *message)
{
	error_fields(r, 'N', "NOTICE", "00000", message, NULL);
}

void admin_result_ready(struct admin_result *r)
{
	size_t at = msg_begin(r, 'Z');

	put(r, "I", 1);
	msg_end(r, at);
}
