/*
 * query.c - the tenant named by a SQL string (Query or Parse message).
 *
 * Pure. Statements are read by PostgreSQL's own grammar (libpg_query): we
 * never scan SQL by hand to find a tenant, so quoting, dollar quotes, nested
 * comments and escapes mean here exactly what they mean to the server. The
 * scanner's token list is used for two things only: the text of / * * /
 * comments (sqlcommenter) and a bound on how deeply the input can nest.
 *
 * That bound exists because libpg_query and protobuf-c recurse without a
 * depth limit when they pack and unpack the tree (up to ~1 KB of stack per
 * level): `SELECT 1||1||...||1` of some 50 KB overflows an 8 MB stack. Inputs
 * up to SHALLOW_LEN bytes cannot nest deep enough to matter (at most about
 * one protobuf level per byte); longer ones are parsed only if
 * nest_estimate() stays within NEST_BUDGET, else they are QUERY_UNKNOWN.
 * Either way the worst case stays near 2 MB of stack. The estimate is an
 * upper bound (a fuzzer compared it with real trees while it was written).
 *
 * Not done here: anything a server-side function might do to the key (a
 * user function calling set_config()), and EXECUTE of a prepared statement.
 */
#include "query.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "proto.h"

#define SHALLOW_LEN 1024 /* at most about one protobuf level per byte */
#define NEST_BUDGET 1000 /* nest_estimate() units: 2 protobuf levels each, 4 at most */
#define NEST_MAX    256  /* bracket levels the estimator follows */
#define WALK_MAX    8000 /* backstop for walk(); the budget keeps us far below */
#define SMALL_COPY  1024 /* shorter strings are copied on the stack */

/* Everything the statements and comments of one string have said so far. */
struct acc {
	const struct query_rule *rule;
	size_t keylen;
	bool have_lit;
	char lit[STARTUP_MAX_TENANT_LEN + 1];
	size_t lit_len;
	int param;        /* 0: none */
	unsigned sources; /* QSRC_* of the places above */
	bool conflict;    /* two different tenants (or parameters) */
	bool unknown;     /* the key gets a value we cannot know */
	bool invalid;     /* PostgreSQL would refuse what libpg_query accepted */
	int key_param;    /* set_config($n, ...): see struct query_tenant */
	int key_value_param;
	char key_value[STARTUP_MAX_TENANT_LEN + 1];
};

/* A constant (or parameter) found where a tenant may be. */
enum val_kind { VAL_OTHER, VAL_NULL, VAL_TEXT, VAL_PARAM };

struct val {
	enum val_kind kind;
	const char *s; /* VAL_TEXT: borrowed from the tree, or num */
	size_t len;
	int param;    /* VAL_PARAM */
	char num[16]; /* an integer constant as text */
};

/* ---- bytes ---------------------------------------------------------------- */

static inline unsigned char ascii_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

static inline unsigned char ascii_upper(unsigned char c)
{
	return c >= 'a' && c <= 'z' ? (unsigned char)(c - ('a' - 'A')) : c;
}

/* ASCII case-insensitive, as PostgreSQL's guc_name_compare(); no locale. */
static bool mem_eq_ci(const char *a, size_t alen, const char *b, size_t blen)
{
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
			return false;
	}
	return true;
}

static bool str_eq_ci(const char *a, const char *b)
{
	return mem_eq_ci(a, strlen(a), b, strlen(b));
}

static bool tail_eq_ci(const unsigned char *h, const unsigned char *n, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (ascii_lower(h[i]) != ascii_lower(n[i]))
			return false;
	}
	return true;
}

bool query_mentions(const char *hay, size_t len, const char *needle, size_t nlen)
{
	const unsigned char *h = (const unsigned char *)hay;
	const unsigned char *n = (const unsigned char *)needle;
	const unsigned char *p, *stop, *lo_at, *up_at;
	unsigned char lo, up;
	bool find_lo = true, find_up;

	if (nlen == 0)
		return true;
	if (nlen > len)
		return false;
	/*
	 * memchr() finds candidates for the first byte in both cases; each
	 * case's next position is kept until it has been tried, so no byte is
	 * searched twice. stop is one past the last possible start.
	 */
	lo = ascii_lower(n[0]);
	up = ascii_upper(n[0]);
	p = h;
	stop = h + (len - nlen) + 1;
	lo_at = up_at = stop;
	find_up = lo != up;
	for (;;) {
		const unsigned char *c;

		if (find_lo) {
			lo_at = memchr(p, lo, (size_t)(stop - p));
			lo_at = lo_at ? lo_at : stop;
			find_lo = false;
		}
		if (find_up) {
			up_at = memchr(p, up, (size_t)(stop - p));
			up_at = up_at ? up_at : stop;
			find_up = false;
		}
		c = lo_at < up_at ? lo_at : up_at;
		if (c == stop)
			return false;
		if (tail_eq_ci(c + 1, n + 1, nlen - 1))
			return true;
		p = c + 1;
		if (c == lo_at)
			find_lo = true;
		else
			find_up = true;
	}
}

/* ---- what was found ------------------------------------------------------- */

static void acc_literal(struct acc *a, unsigned src, const char *s, size_t n)
{
	/* Setting the key to '' means "no tenant", as RESET does. */
	if (n == 0)
		return;
	if (n > STARTUP_MAX_TENANT_LEN || memchr(s, 0, n) != NULL ||
	    !proto_is_utf8((const uint8_t *)s, n)) {
		a->unknown = true;
		return;
	}
	if (a->have_lit) {
		if (n != a->lit_len || memcmp(s, a->lit, n) != 0)
			a->conflict = true;
		a->sources |= src;
		return;
	}
	memcpy(a->lit, s, n);
	a->lit[n] = '\0';
	a->lit_len = n;
	a->have_lit = true;
	a->sources |= src;
}

static void acc_param(struct acc *a, unsigned src, int param)
{
	/* $0 does not exist; the server refuses it when it binds. */
	if (param < 1) {
		a->unknown = true;
		return;
	}
	/* Two parameters may carry two tenants: one q->param cannot say. */
	if (a->param != 0 && a->param != param)
		a->conflict = true;
	a->param = param;
	a->sources |= src;
}

/* A place that must name the tenant when it is a constant or a parameter. */
static void acc_value(struct acc *a, unsigned src, const struct val *v)
{
	if (v->kind == VAL_TEXT)
		acc_literal(a, src, v->s, v->len);
	else if (v->kind == VAL_PARAM)
		acc_param(a, src, v->param);
}

/* ---- tree helpers --------------------------------------------------------- */

/* Looks through `x::type` and CAST(x AS type). */
static const PgQuery__Node *strip_casts(const PgQuery__Node *n)
{
	while (n && n->node_case == PG_QUERY__NODE__NODE_TYPE_CAST && n->type_cast)
		n = n->type_cast->arg;
	return n;
}

/*
 * The value of a constant as PostgreSQL prints it: strings as written
 * (escapes already resolved by the scanner), integers in decimal, other
 * numbers with the exact text the scanner kept. Booleans and bit strings
 * are VAL_OTHER: no tenant is spelled that way.
 */
static void node_value(const PgQuery__Node *n, struct val *v)
{
	const PgQuery__AConst *c;

	v->kind = VAL_OTHER;
	v->s = NULL;
	v->len = 0;
	v->param = 0;
	n = strip_casts(n);
	if (!n)
		return;
	if (n->node_case == PG_QUERY__NODE__NODE_PARAM_REF && n->param_ref) {
		v->kind = VAL_PARAM;
		v->param = n->param_ref->number;
		return;
	}
	if (n->node_case != PG_QUERY__NODE__NODE_A_CONST || !n->a_const)
		return;
	c = n->a_const;
	if (c->isnull) {
		v->kind = VAL_NULL;
		return;
	}
	switch (c->val_case) {
	case PG_QUERY__A__CONST__VAL_SVAL:
		if (c->sval && c->sval->sval)
			v->s = c->sval->sval;
		break;
	case PG_QUERY__A__CONST__VAL_FVAL:
		if (c->fval && c->fval->fval)
			v->s = c->fval->fval;
		break;
	case PG_QUERY__A__CONST__VAL_IVAL:
		if (c->ival) {
			snprintf(v->num, sizeof(v->num), "%d", (int)c->ival->ival);
			v->s = v->num;
		}
		break;
	default:
		break;
	}
	if (v->s) {
		v->kind = VAL_TEXT;
		v->len = strlen(v->s);
	}
}

static const char *node_string(const PgQuery__Node *n)
{
	if (n && n->node_case == PG_QUERY__NODE__NODE_STRING && n->string)
		return n->string->sval;
	return NULL;
}

/* ---- set_config() and DO, anywhere in a statement ----------------------- */

static void check_set_config(struct acc *a, const PgQuery__FuncCall *f)
{
	const char *fn = f->n_funcname ? node_string(f->funcname[f->n_funcname - 1]) : NULL;
	struct val name, v;

	/*
	 * Unquoted names arrive lowercased. Only the built-in function: another
	 * schema's set_config is not ours to interpret.
	 */
	if (!fn || strcmp(fn, "set_config") != 0 || f->n_funcname > 2)
		return;
	if (f->n_funcname == 2) {
		const char *schema = node_string(f->funcname[0]);

		if (!schema || strcmp(schema, "pg_catalog") != 0)
			return;
	}
	/*
	 * The server refuses other forms: set_config's arguments have no names
	 * in pg_proc, so named notation finds no function either.
	 */
	if (f->n_args != 3 || f->agg_star || f->func_variadic)
		return;
	for (size_t i = 0; i < f->n_args; i++) {
		if (f->args[i] && f->args[i]->node_case == PG_QUERY__NODE__NODE_NAMED_ARG_EXPR)
			return;
	}
	node_value(f->args[0], &name);
	/* A key that is not a constant may be ours: only the server would know. */
	if (name.kind == VAL_OTHER) {
		a->unknown = true;
		return;
	}
	if (name.kind == VAL_PARAM) {
		/* Named at Bind: remember where its value comes from (one such call only). */
		node_value(f->args[1], &v);
		if (a->key_param != 0 || v.kind == VAL_OTHER ||
		    (v.kind == VAL_TEXT && v.len > STARTUP_MAX_TENANT_LEN)) {
			a->unknown = true;
			return;
		}
		a->key_param = name.param;
		if (v.kind == VAL_PARAM) {
			a->key_value_param = v.param;
		} else if (v.kind == VAL_TEXT) {
			memcpy(a->key_value, v.s, v.len);
			a->key_value[v.len] = '\0';
		}
		return;
	}
	if (name.kind != VAL_TEXT || !mem_eq_ci(name.s, name.len, a->rule->key, a->keylen))
		return;
	node_value(f->args[1], &v);
	switch (v.kind) {
	case VAL_TEXT:
	case VAL_PARAM:
		acc_value(a, QSRC_SET_CONFIG, &v);
		break;
	case VAL_NULL:
		/* set_config(key, NULL, ...) resets the key: no tenant. */
		break;
	case VAL_OTHER:
		a->unknown = true;
		break;
	}
}

/* A DO block runs code we do not parse: if it names the key or set_config, assume the worst. */
static void check_do(struct acc *a, const PgQuery__DoStmt *d)
{
	for (size_t i = 0; i < d->n_args; i++) {
		const PgQuery__Node *n = d->args[i];
		const char *body;

		if (!n || n->node_case != PG_QUERY__NODE__NODE_DEF_ELEM || !n->def_elem)
			continue;
		body = node_string(n->def_elem->arg);
		if (body && (query_mentions(body, strlen(body), a->rule->key, a->keylen) ||
			     query_mentions(body, strlen(body), "set_config", 10)))
			a->unknown = true;
	}
}

static const void *field_at(const ProtobufCMessage *m, unsigned offset)
{
	return (const char *)m + offset;
}

/*
 * Visits every message under m through protobuf-c's descriptors, so no node
 * type is forgotten: set_config() may hide in a CTE, a subquery, FROM, a
 * VALUES list or an argument of another call.
 */
static void walk(struct acc *a, const ProtobufCMessage *m, unsigned depth)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;

	if (depth > WALK_MAX) {
		a->unknown = true;
		return;
	}
	if (d == &pg_query__node__descriptor) {
		/* A Node is a oneof of some 240 types: go straight to the one set. */
		const PgQuery__Node *n = (const PgQuery__Node *)m;
		const ProtobufCFieldDescriptor *f;
		const ProtobufCMessage *sub;

		if (n->node_case == PG_QUERY__NODE__NODE__NOT_SET)
			return;
		f = protobuf_c_message_descriptor_get_field(d, (unsigned)n->node_case);
		if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE)
			return;
		memcpy(&sub, field_at(m, f->offset), sizeof(sub));
		if (sub)
			walk(a, sub, depth + 1);
		return;
	}
	if (d == &pg_query__func_call__descriptor)
		check_set_config(a, (const PgQuery__FuncCall *)m);
	else if (d == &pg_query__do_stmt__descriptor)
		check_do(a, (const PgQuery__DoStmt *)m);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			const ProtobufCMessage *const *v;
			size_t count;

			memcpy(&count, field_at(m, f->quantifier_offset), sizeof(count));
			memcpy(&v, field_at(m, f->offset), sizeof(v));
			for (size_t j = 0; j < count; j++) {
				if (v[j])
					walk(a, v[j], depth + 1);
			}
		} else {
			const ProtobufCMessage *sub;

			if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
				uint32_t which;

				memcpy(&which, field_at(m, f->quantifier_offset), sizeof(which));
				if (which != f->id)
					continue;
			}
			memcpy(&sub, field_at(m, f->offset), sizeof(sub));
			if (sub)
				walk(a, sub, depth + 1);
		}
	}
}

/* ---- tenant_column --------------------------------------------------------- */

static bool is_tenant_column(const struct acc *a, const PgQuery__Node *n)
{
	const PgQuery__ColumnRef *c;
	const char *last;

	n = strip_casts(n);
	if (!n || n->node_case != PG_QUERY__NODE__NODE_COLUMN_REF || !n->column_ref)
		return false;
	c = n->column_ref;
	last = c->n_fields ? node_string(c->fields[c->n_fields - 1]) : NULL;
	return last && str_eq_ci(last, a->rule->column);
}

/* `column = value` or `value = column`, with = or OPERATOR(pg_catalog.=). */
static void column_eq(struct acc *a, const PgQuery__AExpr *e)
{
	const char *op = e->n_name ? node_string(e->name[e->n_name - 1]) : NULL;
	const PgQuery__Node *other;
	struct val v;

	if (e->kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || !op || strcmp(op, "=") != 0)
		return;
	if (e->n_name == 2) {
		const char *schema = node_string(e->name[0]);

		if (!schema || strcmp(schema, "pg_catalog") != 0)
			return;
	} else if (e->n_name != 1) {
		return;
	}
	if (is_tenant_column(a, e->lexpr))
		other = e->rexpr;
	else if (is_tenant_column(a, e->rexpr))
		other = e->lexpr;
	else
		return;
	node_value(other, &v);
	acc_value(a, QSRC_COLUMN, &v);
}

/*
 * Only the top-level AND chain binds every row to the value: under OR or
 * NOT the column may hold anything else.
 */
static void where_and(struct acc *a, const PgQuery__Node *n)
{
	if (!n)
		return;
	if (n->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR && n->bool_expr &&
	    n->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
		for (size_t i = 0; i < n->bool_expr->n_args; i++)
			where_and(a, n->bool_expr->args[i]);
		return;
	}
	if (n->node_case == PG_QUERY__NODE__NODE_A_EXPR && n->a_expr)
		column_eq(a, n->a_expr);
}

/* INSERT INTO t (..., column, ...) VALUES (...), (...): every row's value. */
static void column_insert(struct acc *a, const PgQuery__InsertStmt *ins)
{
	const PgQuery__SelectStmt *sel;
	size_t at;

	if (!ins->select_stmt || ins->select_stmt->node_case != PG_QUERY__NODE__NODE_SELECT_STMT ||
	    !ins->select_stmt->select_stmt)
		return;
	sel = ins->select_stmt->select_stmt;
	for (at = 0; at < ins->n_cols; at++) {
		const PgQuery__Node *c = ins->cols[at];

		if (c && c->node_case == PG_QUERY__NODE__NODE_RES_TARGET && c->res_target &&
		    c->res_target->n_indirection == 0 && c->res_target->name &&
		    str_eq_ci(c->res_target->name, a->rule->column))
			break;
	}
	if (at == ins->n_cols)
		return;
	for (size_t r = 0; r < sel->n_values_lists; r++) {
		const PgQuery__Node *row = sel->values_lists[r];
		struct val v;

		if (!row || row->node_case != PG_QUERY__NODE__NODE_LIST || !row->list ||
		    at >= row->list->n_items)
			continue;
		/* DEFAULT or an expression names no tenant here: skip the row. */
		node_value(row->list->items[at], &v);
		acc_value(a, QSRC_COLUMN, &v);
	}
}

static void column_stmt(struct acc *a, const PgQuery__Node *stmt)
{
	switch (stmt->node_case) {
	case PG_QUERY__NODE__NODE_SELECT_STMT:
		/* A set operation (UNION ...) has no WHERE of its own. */
		if (stmt->select_stmt &&
		    stmt->select_stmt->op == PG_QUERY__SET_OPERATION__SETOP_NONE)
			where_and(a, stmt->select_stmt->where_clause);
		break;
	case PG_QUERY__NODE__NODE_UPDATE_STMT:
		if (stmt->update_stmt)
			where_and(a, stmt->update_stmt->where_clause);
		break;
	case PG_QUERY__NODE__NODE_DELETE_STMT:
		if (stmt->delete_stmt)
			where_and(a, stmt->delete_stmt->where_clause);
		break;
	case PG_QUERY__NODE__NODE_INSERT_STMT:
		if (stmt->insert_stmt)
			column_insert(a, stmt->insert_stmt);
		break;
	default:
		break;
	}
}

/* ---- statements we may answer ourselves ---------------------------------- */

static bool local(struct query_local *l, const char *tag, char txn, bool is_key)
{
	size_t n = strlen(tag);

	/* A tag the struct cannot hold goes to the server (see query.h). */
	if (n >= sizeof(l->tag))
		return false;
	memcpy(l->tag, tag, n + 1);
	l->txn = txn;
	l->is_key = is_key;
	return true;
}

/* SET/RESET. Tags as PostgreSQL's CreateCommandTag() gives them. */
static bool var_set(struct acc *a, const PgQuery__VariableSetStmt *s, struct query_local *l)
{
	bool key = s->name && str_eq_ci(s->name, a->rule->key);
	struct val v;

	switch (s->kind) {
	case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE:
		/* libpg_query accepts SET x = $1 (for its normaliser); PostgreSQL does not. */
		for (size_t i = 0; i < s->n_args; i++) {
			node_value(s->args[i], &v);
			if (v.kind == VAL_PARAM) {
				a->invalid = true;
				return false;
			}
		}
		if (!key)
			return local(l, "SET", 0, false);
		/* SET key = 'a', 'b' makes the list "a, b": not a plain tenant. */
		if (s->n_args != 1) {
			a->unknown = true;
			return false;
		}
		node_value(s->args[0], &v);
		if (v.kind != VAL_TEXT) {
			a->unknown = true;
			return false;
		}
		if (v.len == 0)
			return local(l, "SET", 0, true);
		acc_literal(a, QSRC_SET, v.s, v.len);
		return false;
	case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT:
		return local(l, "SET", 0, key);
	case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_CURRENT:
		/* SET key FROM CURRENT keeps whatever the server has. */
		return key ? false : local(l, "SET", 0, false);
	case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI:
		return local(l, "SET", 0, false);
	case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET:
		return local(l, "RESET", 0, key);
	case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL:
		/* RESET ALL resets the key too. */
		return local(l, "RESET", 0, true);
	default:
		return false;
	}
}

static bool txn_stmt(const PgQuery__TransactionStmt *t, struct query_local *l)
{
	switch (t->kind) {
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
		return local(l, "BEGIN", 'T', false);
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
		return local(l, "START TRANSACTION", 'T', false);
	/* AND CHAIN opens the next transaction at once, and is an error outside one. */
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
		return !t->chain && local(l, "COMMIT", 'I', false);
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
		return !t->chain && local(l, "ROLLBACK", 'I', false);
	default:
		return false;
	}
}

/* Records what one statement says; true if it may be answered locally. */
static bool classify(struct acc *a, const PgQuery__Node *stmt, struct query_local *l)
{
	bool is_local = false;

	if (stmt->node_case == PG_QUERY__NODE__NODE_VARIABLE_SET_STMT && stmt->variable_set_stmt)
		is_local = var_set(a, stmt->variable_set_stmt, l);
	else if (stmt->node_case == PG_QUERY__NODE__NODE_TRANSACTION_STMT && stmt->transaction_stmt)
		is_local = txn_stmt(stmt->transaction_stmt, l);
	else if (a->rule->column)
		column_stmt(a, stmt);
	walk(a, &stmt->base, 0);
	return is_local;
}

/* ---- sqlcommenter ----------------------------------------------------------- */

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Undoes sqlcommenter's quoting: with unescape, a backslash takes the next
 * byte literally (\' is a quote), then %XX is one byte. Writes at most cap
 * bytes but counts all of them in *outlen. False on a broken %XX.
 */
static bool url_decode(const char *s, size_t n, bool unescape, char *out, size_t cap,
                       size_t *outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (unescape && c == '\\') {
			if (++i == n)
				return false;
			c = s[i];
		} else if (c == '%') {
			int hi, lo;

			if (n - i < 3)
				return false;
			hi = hex_digit(s[i + 1]);
			lo = hex_digit(s[i + 2]);
			if (hi < 0 || lo < 0)
				return false;
			c = (char)(hi << 4 | lo);
			i += 2;
		}
		if (o < cap)
			out[o] = c;
		o++;
	}
	*outlen = o;
	return true;
}

/*
 * One comment body (between the delimiters): key='value',key2='value2',
 * whitespace allowed around the pairs. With apply false it only checks the
 * form; a comment that is not entirely well-formed says nothing.
 */
static bool commenter(struct acc *a, const char *s, size_t n, bool apply)
{
	size_t i = 0;

	while (n > 0 && is_space(s[n - 1]))
		n--;
	while (i < n && is_space(s[i]))
		i++;
	if (i == n)
		return false;
	for (;;) {
		char key[256], val[STARTUP_MAX_TENANT_LEN + 1];
		size_t ks = i, kl, vs, vl;

		while (i < n && s[i] != '=' && s[i] != ',' && s[i] != '\'' && !is_space(s[i]))
			i++;
		if (i == ks || i + 1 >= n || s[i] != '=' || s[i + 1] != '\'')
			return false;
		if (!url_decode(s + ks, i - ks, false, key, sizeof(key), &kl))
			return false;
		i += 2;
		vs = i;
		while (i < n && s[i] != '\'')
			i += s[i] == '\\' ? 2 : 1;
		if (i >= n)
			return false;
		if (!url_decode(s + vs, i - vs, true, val, sizeof(val), &vl))
			return false;
		i++;
		if (kl <= sizeof(key) && mem_eq_ci(key, kl, a->rule->key, a->keylen)) {
			/* Too long is the caller's QUERY_UNKNOWN; NUL or bad UTF-8 is malformed. */
			if (vl <= STARTUP_MAX_TENANT_LEN &&
			    (memchr(val, 0, vl) || !proto_is_utf8((const uint8_t *)val, vl)))
				return false;
			if (apply && vl <= STARTUP_MAX_TENANT_LEN)
				acc_literal(a, QSRC_COMMENT, val, vl);
			else if (apply)
				a->unknown = true;
		}
		while (i < n && is_space(s[i]))
			i++;
		if (i == n)
			return true;
		if (s[i] != ',')
			return false;
		i++;
		while (i < n && is_space(s[i]))
			i++;
		if (i == n)
			return false;
	}
}

static void find_comments(struct acc *a, const char *sql, size_t len,
                          const PgQuery__ScanResult *scan)
{
	for (size_t i = 0; i < scan->n_tokens; i++) {
		const PgQuery__ScanToken *t = scan->tokens[i];
		size_t start, end;

		if (!t || t->token != PG_QUERY__TOKEN__C_COMMENT || t->start < 0 || t->end < 0)
			continue;
		start = (size_t)t->start;
		end = (size_t)t->end;
		if (end > len || start > end || end - start < 4 ||
		    memcmp(sql + start, "/*", 2) != 0 || memcmp(sql + end - 2, "*/", 2) != 0)
			continue;
		if (commenter(a, sql + start + 2, end - start - 4, false))
			(void)commenter(a, sql + start + 2, end - start - 4, true);
	}
}

/* ---- how deep may the tree be? --------------------------------------------- */

struct nest {
	size_t seg;   /* tokens in the current segment */
	size_t child; /* deepest bracket group in the current segment */
	size_t best;  /* deepest finished segment */
	size_t chain; /* UNION/INTERSECT/EXCEPT/JOIN: above the whole level */
	bool boolean; /* AND/OR seen: at most two flattened levels (OR of ANDs) */
	bool is_case;
};

static size_t nest_value(const struct nest *l)
{
	size_t seg = l->seg + l->child;

	return (l->best > seg ? l->best : seg) + l->chain + (l->boolean ? 2 : 0);
}

static void nest_cut(struct nest *l)
{
	size_t seg = l->seg + l->child;

	if (seg > l->best)
		l->best = seg;
	l->seg = l->child = 0;
}

/*
 * An upper bound on the parse tree's depth, in "token" units, from the
 * token list alone. A tree level is always paid for by a token: an operator,
 * keyword or bracket. Tokens in one segment (between commas, AND/OR,
 * WHEN/THEN/ELSE, set operations and joins at one bracket level) may all be
 * ancestors of each other (a+b+c is left-deep); different segments are
 * siblings, except that set operations and joins chain across them. A
 * bracket group (also CASE ... END) hangs under its whole enclosing segment.
 * Returns SIZE_MAX when brackets nest deeper than NEST_MAX.
 */
static size_t nest_estimate(const PgQuery__ScanResult *scan)
{
	struct nest lv[NEST_MAX];
	size_t top = 0, worst = 0;

	memset(&lv[0], 0, sizeof(lv[0]));
	for (size_t i = 0; i < scan->n_tokens; i++) {
		const PgQuery__ScanToken *t = scan->tokens[i];
		struct nest *l = &lv[top];

		if (!t)
			continue;
		switch ((int)t->token) {
		case PG_QUERY__TOKEN__SQL_COMMENT:
		case PG_QUERY__TOKEN__C_COMMENT:
			break;
		case PG_QUERY__TOKEN__CASE:
		case '(':
		case '[':
			if (top + 1 == NEST_MAX)
				return SIZE_MAX;
			l->seg++;
			top++;
			memset(&lv[top], 0, sizeof(lv[top]));
			lv[top].is_case = t->token == PG_QUERY__TOKEN__CASE;
			break;
		case PG_QUERY__TOKEN__END_P:
		case ')':
		case ']':
			/* END closes a CASE; elsewhere (END of a transaction) it is a word. */
			if (top == 0 || (t->token == PG_QUERY__TOKEN__END_P) != l->is_case) {
				l->seg++;
				break;
			}
			top--;
			if (nest_value(l) + 1 > lv[top].child)
				lv[top].child = nest_value(l) + 1;
			break;
		case ';':
			nest_cut(l);
			if (top == 0) {
				/* Statements are siblings. */
				if (nest_value(l) > worst)
					worst = nest_value(l);
				memset(l, 0, sizeof(*l));
			}
			break;
		case PG_QUERY__TOKEN__AND:
		case PG_QUERY__TOKEN__OR:
			l->boolean = true;
			nest_cut(l);
			break;
		case ',':
		case PG_QUERY__TOKEN__WHEN:
		case PG_QUERY__TOKEN__THEN:
		case PG_QUERY__TOKEN__ELSE:
			nest_cut(l);
			break;
		case PG_QUERY__TOKEN__UNION:
		case PG_QUERY__TOKEN__INTERSECT:
		case PG_QUERY__TOKEN__EXCEPT:
		case PG_QUERY__TOKEN__JOIN:
			l->chain++;
			nest_cut(l);
			break;
		default:
			l->seg++;
			break;
		}
	}
	/* Unbalanced brackets do not parse, but fold them anyway. */
	while (top > 0) {
		size_t v = nest_value(&lv[top]) + 1;

		top--;
		if (v > lv[top].child)
			lv[top].child = v;
	}
	return nest_value(&lv[0]) > worst ? nest_value(&lv[0]) : worst;
}

/* ---- the whole string ------------------------------------------------------ */

static void finish(const struct acc *a, size_t nstmts, bool all_local, struct query_tenant *q)
{
	if (a->invalid) {
		q->kind = QUERY_INVALID;
	} else if (a->conflict) {
		q->kind = QUERY_CONFLICT;
	} else if (a->unknown) {
		q->kind = QUERY_UNKNOWN;
	} else if (a->have_lit) {
		q->kind = QUERY_TENANT;
		memcpy(q->tenant, a->lit, a->lit_len + 1);
		q->tenant_len = a->lit_len;
		q->param = a->param;
		q->sources = a->sources;
	} else if (a->param) {
		q->kind = QUERY_PARAM;
		q->param = a->param;
		q->sources = a->sources;
	} else if (nstmts > 0 && nstmts <= QUERY_MAX_LOCAL && all_local) {
		q->kind = QUERY_LOCAL;
		q->nlocal = nstmts;
	} else {
		q->kind = QUERY_OTHER;
	}
	if (q->kind != QUERY_LOCAL)
		q->nlocal = 0;
	q->nstmts = nstmts;
	q->key_param = a->key_param;
	q->key_value_param = a->key_value_param;
	memcpy(q->key_value, a->key_value, sizeof(q->key_value));
}

/* Parses buf (NUL-terminated, n bytes) and fills q; scan may be NULL. */
static void parse_and_classify(struct acc *a, const char *buf, size_t n,
                               const PgQuery__ScanResult *scan, struct query_tenant *q)
{
	PgQueryProtobufParseResult pr = pg_query_parse_protobuf(buf);
	PgQuery__ParseResult *tree = NULL;
	bool all_local = true;

	if (pr.error) {
		q->kind = QUERY_INVALID;
		goto out;
	}
	tree = pg_query__parse_result__unpack(NULL, pr.parse_tree.len,
	                                      (const uint8_t *)pr.parse_tree.data);
	if (!tree) {
		/* Out of memory: we cannot tell, and must not guess. */
		q->kind = QUERY_UNKNOWN;
		goto out;
	}
	for (size_t i = 0; i < tree->n_stmts; i++) {
		const PgQuery__RawStmt *rs = tree->stmts[i];
		struct query_local scratch = {.txn = 0};
		struct query_local *l = i < QUERY_MAX_LOCAL ? &q->local[i] : &scratch;

		if (!rs || !rs->stmt) {
			all_local = false;
			continue;
		}
		if (!classify(a, rs->stmt, l))
			all_local = false;
	}
	/* A comment belongs to the whole string, not to one statement. */
	if (scan)
		find_comments(a, buf, n, scan);
	finish(a, tree->n_stmts, all_local, q);
	pg_query__parse_result__free_unpacked(tree, NULL);
out:
	pg_query_free_protobuf_parse_result(pr);
}

static void classify_copy(const char *buf, size_t n, const struct query_rule *rule,
                          struct query_tenant *q)
{
	PgQueryScanResult sr = {0};
	PgQuery__ScanResult *scan = NULL;
	struct acc a = {.rule = rule, .keylen = strlen(rule->key)};
	bool deep = n > SHALLOW_LEN;
	bool comments =
	        memmem(buf, n, "/*", 2) != NULL && query_mentions(buf, n, rule->key, a.keylen);

	if (deep || comments) {
		sr = pg_query_scan(buf);
		/* The parser uses the same scanner: this input would not parse. */
		if (sr.error) {
			q->kind = QUERY_INVALID;
			goto out;
		}
		scan = pg_query__scan_result__unpack(NULL, sr.pbuf.len,
		                                     (const uint8_t *)sr.pbuf.data);
		if (!scan || (deep && nest_estimate(scan) > NEST_BUDGET)) {
			q->kind = QUERY_UNKNOWN;
			goto out;
		}
	}
	parse_and_classify(&a, buf, n, comments ? scan : NULL, q);
out:
	if (scan)
		pg_query__scan_result__free_unpacked(scan, NULL);
	if (deep || comments)
		pg_query_free_scan_result(sr);
}

void query_find_tenant(const char *sql, size_t len, const struct query_rule *rule,
                       struct query_tenant *q)
{
	char small[SMALL_COPY];
	const char *nul = len ? memchr(sql, 0, len) : NULL;
	size_t n = nul ? (size_t)(nul - sql) : len;
	char *buf = small;

	q->kind = QUERY_OTHER;
	q->sources = 0;
	q->tenant[0] = '\0';
	q->tenant_len = 0;
	q->param = 0;
	q->nstmts = 0;
	q->nlocal = 0;
	q->key_param = 0;
	q->key_value_param = 0;
	q->key_value[0] = '\0';
	/* PostgreSQL reads the string up to its NUL; libpg_query needs one. */
	if (n >= sizeof(small)) {
		buf = malloc(n + 1);
		if (!buf) {
			q->kind = QUERY_UNKNOWN;
			return;
		}
	}
	if (n)
		memcpy(buf, sql, n);
	buf[n] = '\0';
	classify_copy(buf, n, rule, q);
	if (buf != small)
		free(buf);
}
