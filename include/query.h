/*
 * query.h - the tenant named by a SQL string, found with PostgreSQL's own
 * parser (libpg_query) and scanner (for comments). Pure: no I/O, no state.
 *
 * Used twice: before a session has a server (the tenant source `query`:
 * which cluster should this session go to?) and by the stickiness guard on
 * spliced sessions (does this statement switch to another tenant?). The
 * guard calls query_mentions() first, so a statement that does not contain
 * the key's bytes is never parsed.
 *
 * Where a tenant is found, per statement of a (possibly multi-statement)
 * string:
 *  - QSRC_SET:        SET [SESSION|LOCAL] key = 'x' | TO x   (name compared
 *                     case-insensitively, as PostgreSQL compares GUC names;
 *                     a bare word or number gives its text: abc, 42, 1.50)
 *  - QSRC_SET_CONFIG: [pg_catalog.]set_config('key', 'x', bool) anywhere in
 *                     a statement (target list, FROM, WHERE, CTEs,
 *                     subqueries, other calls' arguments). The setting name
 *                     must be a string constant; the value a string or
 *                     number constant (casts allowed), or $n (QUERY_PARAM);
 *                     anything else is QUERY_UNKNOWN. NULL or '' is no tenant.
 *  - QSRC_COMMENT:    a sqlcommenter comment: / *key='x',other='y'* / (values
 *                     and keys URL-encoded, as sqlcommenter writes them; \'
 *                     is a quote; whitespace allowed around the pairs). A
 *                     comment not wholly in that form is ignored. Comments
 *                     are only read if the string contains the key's bytes.
 *  - QSRC_COLUMN:     with rule->column set: `column = const` (either side,
 *                     qualified or not) in the top-level AND chain of a
 *                     WHERE clause of SELECT/UPDATE/DELETE, or the column's
 *                     value in every row of INSERT ... (cols) VALUES (...).
 *                     A `$n` there gives QUERY_PARAM: the value is in Bind.
 *                     OR, NOT, subqueries and CTEs are not looked into.
 *
 * Combining the places of the whole string (first match wins):
 *  1. QUERY_INVALID  the string does not parse (PostgreSQL 15 grammar), or
 *                    uses a parameter in SET (libpg_query accepts it,
 *                    PostgreSQL does not).
 *  2. QUERY_CONFLICT two different tenants (byte-wise), or two different
 *                    parameter numbers ($1 and $2 may carry two tenants).
 *  3. QUERY_UNKNOWN  set_config(key, <expression>), SET key = 'a', 'b', a
 *                    tenant over STARTUP_MAX_TENANT_LEN bytes, a DO block
 *                    whose body contains the key, or a statement nested too
 *                    deeply to analyse safely (see query_find_tenant()).
 *  4. QUERY_TENANT   all literal tenants agree. If a $n place exists too,
 *                    q->param names it (else 0): its Bind value should be
 *                    the same tenant.
 *  5. QUERY_PARAM    only $n places, all the same n.
 *  6. QUERY_LOCAL    every statement (1..QUERY_MAX_LOCAL) is SET/RESET of a
 *                    setting, or BEGIN/START TRANSACTION/COMMIT/END/ROLLBACK/
 *                    ABORT (not AND CHAIN): q->local[] in order.
 *  7. QUERY_OTHER    anything else, including an empty string or one of
 *                    only comments (PostgreSQL answers EmptyQueryResponse)
 *                    and SET key FROM CURRENT.
 * q->sources is the OR of the sources of every place that named the tenant
 * (literal or $n).
 */
#ifndef TR_QUERY_H
#define TR_QUERY_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"
#include "startup.h"

#define QUERY_MAX_LOCAL 16 /* statements in one locally answered string */

enum query_kind {
	QUERY_OTHER,	/* names no tenant and cannot be answered locally */
	QUERY_TENANT,	/* names exactly one tenant: q->tenant */
	QUERY_PARAM,	/* the tenant is the value of parameter $q->param (Bind) */
	QUERY_LOCAL,	/* only SET/RESET of settings and BEGIN/COMMIT/ROLLBACK: q->local */
	QUERY_CONFLICT, /* names two different tenants */
	QUERY_UNKNOWN,	/* sets the key to a value only the server knows (set_config(key, expr)),
			   or is too deeply nested to analyse */
	QUERY_INVALID,	/* does not parse: the server would refuse it */
};

enum query_source {
	QSRC_SET = 1u << 0,
	QSRC_SET_CONFIG = 1u << 1,
	QSRC_COMMENT = 1u << 2,
	QSRC_COLUMN = 1u << 3,
};

struct query_rule {
	const char *key;    /* tenant_key, e.g. "app.tenant_id" */
	const char *column; /* tenant_column, or NULL */
};

/* One statement of a QUERY_LOCAL string, in order. */
struct query_local {
	char tag[24]; /* the command tag PostgreSQL would send: "SET", "RESET", "BEGIN",
			 "START TRANSACTION", "COMMIT", "ROLLBACK" */
	char txn;     /* 'T': opens a transaction block, 'I': ends one, 0: neither */
	bool is_key;  /* SET/RESET of the tenant key itself without a tenant
			 (RESET key, RESET ALL, SET key TO DEFAULT, SET key = '') */
};

struct query_tenant {
	enum query_kind kind;
	unsigned sources; /* QSRC_* that named the tenant (QUERY_TENANT, QUERY_PARAM) */
	char tenant[STARTUP_MAX_TENANT_LEN + 1]; /* NUL-terminated (QUERY_TENANT) */
	size_t tenant_len;
	int param; /* QUERY_PARAM: 1-based parameter number */
	/*
	 * set_config($key_param, value, ...): a setting named by a parameter
	 * (any kind). If Bind gives $key_param the key's name, the tenant is
	 * $key_value_param (when not 0), else key_value (NUL-terminated).
	 */
	int key_param;
	int key_value_param;
	char key_value[STARTUP_MAX_TENANT_LEN + 1];
	size_t nstmts; /* statements parsed; 0 for an empty or comment-only string */
	size_t nlocal;
	struct query_local local[QUERY_MAX_LOCAL];
};

/*
 * Classifies sql (len bytes; need not be NUL-terminated; a NUL inside ends
 * it, as PostgreSQL reads it). Setting the key to '' counts as no tenant
 * (like RESET); a tenant longer than STARTUP_MAX_TENANT_LEN is
 * QUERY_UNKNOWN. Never fails on any input: garbage is QUERY_INVALID, and
 * out of memory is QUERY_UNKNOWN. Fills every field of q; q->local only for
 * QUERY_LOCAL (nlocal is 0 otherwise). rule is only read during the call.
 *
 * Cost: one parse (tens of microseconds for a short statement; time grows
 * with the length), plus a scan when the string is over 1 KB or holds a
 * comment and the key. libpg_query and protobuf-c recurse once per tree
 * level without a limit, so strings over 1 KB are parsed only if a bound on
 * their nesting computed from the tokens is small enough; deeper ones are
 * QUERY_UNKNOWN. Needs up to about 2 MB of stack. Uses libpg_query's
 * per-thread memory context; nothing else is kept between calls.
 */
void query_find_tenant(const char *sql, size_t len, const struct query_rule *rule,
		       struct query_tenant *q);

/* True if needle (nlen > 0) occurs in hay, ASCII case-insensitively. Fast. */
bool query_mentions(const char *hay, size_t len, const char *needle, size_t nlen);

#endif /* TR_QUERY_H */
