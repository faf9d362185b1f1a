/*
 * startup.c - the startup packet, the `options` string and the tenant.
 *
 * Pure. The parser follows PostgreSQL's ProcessStartupPacket(): the code
 * after the length says what the packet is; a 3.x StartupMessage is a list of
 * NUL-terminated key/value pairs ending with an empty key, and must end
 * exactly there. We are stricter than PostgreSQL in two ways the router needs:
 * duplicate keys are refused (which one would the server honour for the
 * tenant?) and all text must be UTF-8.
 *
 * The tenant may come from several places. If two of them carry different
 * values we refuse: routing by one while the server sees another would put a
 * tenant's rows on the wrong cluster.
 */
#include "startup.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static enum proto_status bad(const char **why, const char *reason)
{
	*why = reason;
	return PROTO_BAD;
}

static enum proto_status parse_params(struct rd *r, struct startup *st, const char **why)
{
	for (;;) {
		const char *k, *v;
		size_t kl, vl;

		if (!rd_cstr(r, &k, &kl))
			return bad(why, "startup packet parameter list is not terminated");
		if (kl == 0)
			break;
		if (!rd_cstr(r, &v, &vl))
			return bad(why, "startup packet parameter has no value");
		if (!proto_is_utf8((const uint8_t *)k, kl) || !proto_is_utf8((const uint8_t *)v, vl))
			return bad(why, "startup packet contains invalid UTF-8");
		for (size_t i = 0; i < st->nparams; i++) {
			if (st->params[i].klen == kl && memcmp(st->params[i].key, k, kl) == 0)
				return bad(why, "startup packet repeats a parameter");
		}
		if (st->nparams == STARTUP_MAX_PARAMS)
			return bad(why, "startup packet has too many parameters");
		st->params[st->nparams++] = (struct startup_param){k, kl, v, vl};
	}
	if (rd_left(r) != 0)
		return bad(why, "startup packet has bytes after its parameter list");
	return PROTO_OK;
}

enum proto_status startup_parse(const uint8_t *buf, size_t len, struct startup *st,
				const char **why)
{
	struct rd r;
	uint32_t plen, code;

	st->nparams = 0;
	st->cancel_key = NULL;
	st->cancel_key_len = 0;
	rd_init(&r, buf, len);
	if (!rd_u32(&r, &plen) || !rd_u32(&r, &code))
		return PROTO_NEED_MORE;
	if (plen < 8 || plen > PROTO_MAX_STARTUP_LEN)
		return bad(why, "invalid length of startup packet");
	if (len < plen)
		return PROTO_NEED_MORE;
	if (len > plen)
		return bad(why, "unexpected data after the startup packet");
	st->code = code;
	switch (code) {
	case PROTO_CODE_SSL:
	case PROTO_CODE_GSSENC:
		if (plen != 8)
			return bad(why, "invalid length of encryption request");
		st->kind = code == PROTO_CODE_SSL ? STARTUP_SSL : STARTUP_GSSENC;
		return PROTO_OK;
	case PROTO_CODE_CANCEL:
		/* 3.0 keys are 4 bytes; 3.2 allows up to 256 (PostgreSQL 18). */
		st->kind = STARTUP_CANCEL;
		if (!rd_u32(&r, &st->cancel_pid) || rd_left(&r) < 4 ||
		    rd_left(&r) > PROTO_MAX_CANCEL_KEY)
			return bad(why, "invalid length of cancel request");
		st->cancel_key_len = rd_left(&r);
		if (!rd_bytes(&r, st->cancel_key_len, &st->cancel_key))
			return bad(why, "invalid length of cancel request");
		return PROTO_OK;
	default:
		break;
	}
	st->kind = STARTUP_V3;
	st->major = (uint16_t)(code >> 16);
	st->minor = (uint16_t)(code & 0xFFFF);
	if (st->major != PROTO_V3_MAJOR)
		return bad(why, "unsupported frontend protocol: the router supports 3.0 to 3.2");
	return parse_params(&r, st, why);
}

const struct startup_param *startup_get(const struct startup *st, const char *key)
{
	size_t kl = strlen(key);

	for (size_t i = 0; i < st->nparams; i++) {
		if (st->params[i].klen == kl && memcmp(st->params[i].key, key, kl) == 0)
			return &st->params[i];
	}
	return NULL;
}

bool startup_guc_name_eq(const char *name, size_t nlen, const char *key)
{
	size_t kl = strlen(key);

	if (nlen != kl)
		return false;
	for (size_t i = 0; i < nlen; i++) {
		/* ParseLongOption() turns '-' into '_'; GUC names ignore case. */
		char a = name[i] == '-' ? '_' : name[i];
		char b = key[i] == '-' ? '_' : key[i];

		if (tolower((unsigned char)a) != tolower((unsigned char)b))
			return false;
	}
	return true;
}

/*
 * One argument of an options string, unescaped into buf, exactly as
 * PostgreSQL's pg_split_opts() does: whitespace separates arguments, a
 * backslash makes the next character literal, and a backslash at the very
 * end is dropped. Returns false when no argument is left; *len may exceed
 * cap (the caller then skips the argument).
 */
static bool next_arg(const char **pp, const char *end, char *buf, size_t cap, size_t *len)
{
	const char *p = *pp;
	bool escaped = false;
	size_t n = 0;

	while (p < end && isspace((unsigned char)*p))
		p++;
	if (p == end)
		return false;
	for (; p < end; p++) {
		if (isspace((unsigned char)*p) && !escaped)
			break;
		if (!escaped && *p == '\\') {
			escaped = true;
			continue;
		}
		escaped = false;
		if (n < cap)
			buf[n] = *p;
		n++;
	}
	*pp = p;
	*len = n;
	return true;
}

/*
 * The switches the server's process_postgres_switches() gives to getopt(),
 * PostgreSQL 13 to 18: a letter followed by ':' takes an argument. We must
 * read the options string the way the server will, or a bundled `-ec x=y`
 * or a `-C -cx=y` (where -C eats the next word) would make us route by a
 * tenant the server never sets, or the reverse.
 */
static const char pg_switches[] = "B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:";

/* 1: switch with argument, 0: switch without, -1: unknown (the server refuses it). */
static int switch_kind(char ch)
{
	const char *p = ch != ':' && ch != '\0' ? strchr(pg_switches, ch) : NULL;

	if (p == NULL)
		return -1;
	return p[1] == ':';
}

void startup_each_option(const char *options, size_t len, startup_option_fn fn, void *arg)
{
	const char *p = options, *end = options + len;
	/* An argument cannot be longer than the options string itself. */
	char cur[PROTO_MAX_STARTUP_LEN], next[PROTO_MAX_STARTUP_LEN];
	size_t n, nn;

	/*
	 * getopt(3) as glibc runs it: "--" ends the switches; a word that is
	 * not a switch is skipped (the server then rejects the connection, so
	 * what we route by no longer matters).
	 */
	while (next_arg(&p, end, cur, sizeof(cur), &n)) {
		if (n > sizeof(cur))
			continue;
		if (n == 2 && cur[0] == '-' && cur[1] == '-')
			return;
		if (n < 2 || cur[0] != '-')
			continue;
		for (size_t j = 1; j < n; j++) {
			const char *opt, *eq;
			size_t olen;
			int kind = switch_kind(cur[j]);

			if (kind <= 0)
				continue;
			if (j + 1 < n) {
				opt = cur + j + 1;
				olen = n - j - 1;
			} else if (next_arg(&p, end, next, sizeof(next), &nn) && nn <= sizeof(next)) {
				opt = next;
				olen = nn;
			} else {
				return;
			}
			/* ParseLongOption(): NAME=VALUE; only -c and -- set a GUC. */
			if (cur[j] == 'c' || cur[j] == '-') {
				eq = memchr(opt, '=', olen);
				if (eq && !fn(arg, opt, (size_t)(eq - opt), eq + 1,
					      olen - (size_t)(eq - opt) - 1))
					return;
			}
			break;
		}
	}
}

struct find_ctx {
	const struct tenant_rule *rule;
	struct tenant *t;
	enum tenant_result res;
	bool found;
	bool verify; /* a disabled source: it may only disagree, never supply */
};

/* Records one candidate value; a second, different value is a conflict. */
static void candidate(struct find_ctx *fc, const char *v, size_t vl, unsigned src)
{
	if (fc->res == TENANT_CONFLICT || fc->res == TENANT_TOO_LONG)
		return;
	if (fc->verify) {
		if (fc->found && (fc->t->len != vl || memcmp(fc->t->name, v, vl) != 0))
			fc->res = TENANT_CONFLICT;
		return;
	}
	if (vl > STARTUP_MAX_TENANT_LEN) {
		fc->res = TENANT_TOO_LONG;
		return;
	}
	if (!fc->found) {
		memcpy(fc->t->name, v, vl);
		fc->t->name[vl] = '\0';
		fc->t->len = vl;
		fc->t->source = src;
		fc->found = true;
		return;
	}
	if (fc->t->len != vl || memcmp(fc->t->name, v, vl) != 0)
		fc->res = TENANT_CONFLICT;
}

static bool option_cb(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
	struct find_ctx *fc = arg;

	if (startup_guc_name_eq(name, nlen, fc->rule->key))
		candidate(fc, val, vlen, TENANT_SRC_OPTIONS);
	return true;
}

static void scan_options(struct find_ctx *fc, const struct startup *st)
{
	const struct startup_param *o = startup_get(st, "options");

	if (o)
		startup_each_option(o->val, o->vlen, option_cb, fc);
}

static void scan_parameters(struct find_ctx *fc, const struct startup *st)
{
	/* The server matches GUC names without regard to case. */
	for (size_t i = 0; i < st->nparams; i++) {
		const struct startup_param *p = &st->params[i];

		if (strcasecmp(p->key, fc->rule->key) == 0)
			candidate(fc, p->val, p->vlen, TENANT_SRC_PARAMETER);
	}
}

/* The part after the last separator, if any, as a candidate. */
static bool suffix_candidate(struct find_ctx *fc, const struct startup_param *p, unsigned src)
{
	const char *sep;

	if (p == NULL || fc->rule->separator == '\0')
		return false;
	sep = memrchr(p->val, fc->rule->separator, p->vlen);
	if (sep == NULL || sep == p->val)
		return false;
	candidate(fc, sep + 1, p->vlen - (size_t)(sep + 1 - p->val), src);
	return true;
}

enum tenant_result startup_find_tenant(const struct startup *st, const struct tenant_rule *rule,
				       struct tenant *t)
{
	struct find_ctx fc = {.rule = rule, .t = t, .res = TENANT_FOUND, .found = false};

	memset(t, 0, sizeof(*t));
	if (rule->sources & TENANT_SRC_OPTIONS)
		scan_options(&fc, st);
	if (rule->sources & TENANT_SRC_PARAMETER)
		scan_parameters(&fc, st);
	if (rule->sources & TENANT_SRC_USER)
		t->strip_user = suffix_candidate(&fc, startup_get(st, "user"), TENANT_SRC_USER);
	if (rule->sources & TENANT_SRC_DATABASE)
		t->strip_database =
			suffix_candidate(&fc, startup_get(st, "database"), TENANT_SRC_DATABASE);
	/*
	 * The server applies the setting from options and from a startup
	 * parameter whatever our sources say; a disabled source that disagrees
	 * with the tenant we route by would set another tenant there.
	 */
	fc.verify = true;
	if (!(rule->sources & TENANT_SRC_OPTIONS))
		scan_options(&fc, st);
	if (!(rule->sources & TENANT_SRC_PARAMETER))
		scan_parameters(&fc, st);
	if (fc.res != TENANT_FOUND)
		return fc.res;
	if (!fc.found || t->len == 0)
		return TENANT_NONE;
	return TENANT_FOUND;
}

size_t startup_build_forward(const struct startup *st, const struct tenant_rule *rule,
			     const struct tenant *t, uint8_t *out, size_t cap)
{
	struct wbuf w;
	bool add_key = t->source == TENANT_SRC_USER || t->source == TENANT_SRC_DATABASE ||
		       t->source == TENANT_SRC_QUERY;

	wb_init(&w, out, cap);
	wb_begin(&w, 0);
	wb_u32(&w, st->code);
	for (size_t i = 0; i < st->nparams; i++) {
		const struct startup_param *p = &st->params[i];
		size_t vl = p->vlen;

		if ((t->strip_user && strcmp(p->key, "user") == 0) ||
		    (t->strip_database && strcmp(p->key, "database") == 0))
			vl = (size_t)((const char *)memrchr(p->val, rule->separator, p->vlen) -
				      p->val);
		wb_bytes(&w, p->key, p->klen + 1);
		wb_bytes(&w, p->val, vl);
		wb_u8(&w, 0);
	}
	if (add_key) {
		wb_cstr(&w, rule->key);
		wb_bytes(&w, t->name, t->len);
		wb_u8(&w, 0);
	}
	wb_u8(&w, 0);
	wb_end(&w);
	return w.failed ? 0 : w.len;
}
