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
 *                     case-insensitively, as PostgreSQL compares GUC names)
 *  - QSRC_SET_CONFIG: SELECT set_config('key', 'x', bool) anywhere in a
 *                     statement's target list, with constant arguments
 *  - QSRC_COMMENT:    a sqlcommenter comment: / *key='x',other='y'* / (values
 *                     and keys URL-encoded, as sqlcommenter writes them)
 *  - QSRC_COLUMN:     with rule->column set: `column = const` (either side,
 *                     qualified or not) in the top-level AND chain of a
 *                     WHERE clause of SELECT/UPDATE/DELETE, or the column's
 *                     value in every row of INSERT ... (cols) VALUES (...).
 *                     A `$n` there gives QUERY_PARAM: the value is in Bind.
 * All places that name a tenant must agree, else QUERY_CONFLICT.
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
	QUERY_UNKNOWN,	/* sets the key to a value only the server knows (set_config(key, expr)) */
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
	char tag[16]; /* the command tag PostgreSQL would send: "SET", "RESET", "BEGIN",
			 "START TRANSACTION", "COMMIT", "ROLLBACK" */
	char txn;     /* 'T': opens a transaction block, 'I': ends one, 0: neither */
	bool is_key;  /* SET/RESET of the tenant key itself without a tenant
			 (RESET key, SET key TO DEFAULT) */
};

struct query_tenant {
	enum query_kind kind;
	unsigned sources; /* QSRC_* that named the tenant (QUERY_TENANT, QUERY_PARAM) */
	char tenant[STARTUP_MAX_TENANT_LEN + 1]; /* NUL-terminated (QUERY_TENANT) */
	size_t tenant_len;
	int param; /* QUERY_PARAM: 1-based parameter number */
	size_t nlocal;
	struct query_local local[QUERY_MAX_LOCAL];
};

/*
 * Classifies sql (len bytes; need not be NUL-terminated; a NUL inside ends
 * it, as PostgreSQL reads it). Setting the key to '' counts as no tenant
 * (like RESET); a tenant longer than STARTUP_MAX_TENANT_LEN is
 * QUERY_UNKNOWN. Never fails on any input: garbage is QUERY_INVALID.
 */
void query_find_tenant(const char *sql, size_t len, const struct query_rule *rule,
		       struct query_tenant *q);

/* True if needle (nlen > 0) occurs in hay, ASCII case-insensitively. Fast. */
bool query_mentions(const char *hay, size_t len, const char *needle, size_t nlen);

#endif /* TR_QUERY_H */
