/*
 * federation.c - the SQL of a read federation over every cluster (pure).
 *
 * One script, in one transaction, for a database of its own (never one of
 * the clusters): postgres_fdw, then per cluster a foreign server (all its
 * hosts, with target_session_attrs so libpq finds the writer as the router
 * does), a user mapping, a local schema and IMPORT FOREIGN SCHEMA into it,
 * then a schema of UNION ALL views built by a PL/pgSQL block from the local
 * catalog, which holds the imported foreign tables by then. The same text
 * serves print mode and --apply, so what a reader checks is what runs.
 *
 * Re-running replaces: the servers (with their user mappings and foreign
 * tables) and the schemas are dropped and made again. A schema or server of
 * one of those names that does not carry FEDERATION_MARK as its comment was
 * not made here, and the script stops before dropping anything.
 *
 * Every name and value from the configuration or the command line goes
 * through quote_ident/quote_literal equivalents; names longer than
 * PostgreSQL keeps are refused rather than cut.
 */
#include "federation.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* Keywords quote_ident() quotes: every category but unreserved (PostgreSQL 15's kwlist.h). */
static const char *const keywords[] = {
	"all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric",
	"authorization", "between", "bigint", "binary", "bit", "boolean", "both", "case", "cast",
	"char", "character", "check", "coalesce", "collate", "collation", "column",
	"concurrently", "constraint", "create", "cross", "current_catalog", "current_date",
	"current_role", "current_schema", "current_time", "current_timestamp", "current_user",
	"dec", "decimal", "default", "deferrable", "desc", "distinct", "do", "else", "end",
	"except", "exists", "extract", "false", "fetch", "float", "for", "foreign", "freeze",
	"from", "full", "grant", "greatest", "group", "grouping", "having", "ilike", "in",
	"initially", "inner", "inout", "int", "integer", "intersect", "interval", "into", "is",
	"isnull", "join", "lateral", "leading", "least", "left", "like", "limit", "localtime",
	"localtimestamp", "national", "natural", "nchar", "none", "normalize", "not", "notnull",
	"null", "nullif", "numeric", "offset", "on", "only", "or", "order", "out", "outer",
	"overlaps", "overlay", "placing", "position", "precision", "primary", "real",
	"references", "returning", "right", "row", "select", "session_user", "setof", "similar",
	"smallint", "some", "substring", "symmetric", "table", "tablesample", "then", "time",
	"timestamp", "to", "trailing", "treat", "trim", "true", "union", "unique", "user",
	"using", "values", "varchar", "variadic", "verbose", "when", "where", "window", "with",
	"xmlattributes", "xmlconcat", "xmlelement", "xmlexists", "xmlforest", "xmlnamespaces",
	"xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable"
};

/* A growing string with a sticky failure: one check at the end (STYLE §6.9). */
struct sb {
	char *p;
	size_t len, cap;
	bool failed;
};

static void sb_put(struct sb *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		char *p = buf_grow(b->p, &b->cap, b->len + n + 1, 4096, SIZE_MAX);

		if (p == NULL) {
			b->failed = true;
			return;
		}
		b->p = p;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void sb_printf(struct sb *b, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void sb_printf(struct sb *b, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* Only our own short texts go through here; names go through sb_ident/sb_literal. */
	if (n < 0 || (size_t)n >= sizeof(buf)) {
		b->failed = true;
		return;
	}
	sb_put(b, buf, (size_t)n);
}

static int cmp_keyword(const void *key, const void *elem)
{
	return strcmp(key, *(const char *const *)elem);
}

static bool needs_quotes(const char *s)
{
	if (!((*s >= 'a' && *s <= 'z') || *s == '_'))
		return true;
	for (const char *p = s; *p; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return true;
	}
	return bsearch(s, keywords, ARRAY_SIZE(keywords), sizeof(keywords[0]), cmp_keyword) !=
	       NULL;
}

static void sb_ident(struct sb *b, const char *s)
{
	if (!needs_quotes(s)) {
		sb_str(b, s);
		return;
	}
	sb_put(b, "\"", 1);
	for (const char *p = s; *p; p++) {
		if (*p == '"')
			sb_put(b, "\"\"", 2);
		else
			sb_put(b, p, 1);
	}
	sb_put(b, "\"", 1);
}

static void sb_literal(struct sb *b, const char *s)
{
	bool esc = strchr(s, '\\') != NULL;

	sb_str(b, esc ? "E'" : "'");
	for (const char *p = s; *p; p++) {
		if (*p == '\'')
			sb_put(b, "''", 2);
		else if (*p == '\\')
			sb_put(b, "\\\\", 2);
		else
			sb_put(b, p, 1);
	}
	sb_put(b, "'", 1);
}

static char *quote_with(void (*fn)(struct sb *, const char *), const char *s)
{
	struct sb b = {0};

	fn(&b, s);
	sb_put(&b, "", 0);
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

char *federation_quote_ident(const char *s)
{
	return quote_with(sb_ident, s);
}

char *federation_quote_literal(const char *s)
{
	return quote_with(sb_literal, s);
}

/* Everything federation_sql() derives from its arguments. */
struct fed {
	const struct federation_cluster *cl;
	size_t n;
	const struct federation_opts *o;
	const char *into, *prefix, *column, *attrs;
	const char *const *schemas;
	size_t nschemas;
	char **local; /* owned: prefix + cluster name, per cluster */
	char *err;
	size_t errlen;
};

static bool refuse(struct fed *F, const char *fmt, ...) PRINTF_LIKE(2, 3);

static bool refuse(struct fed *F, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(F->err, F->errlen, fmt, ap);
	va_end(ap);
	return false;
}

static bool ident_ok(struct fed *F, const char *what, const char *s)
{
	if (s == NULL || *s == '\0')
		return refuse(F, "%s: give a name", what);
	if (strlen(s) > FEDERATION_MAX_IDENT)
		return refuse(F, "%s \"%s\" is longer than %d bytes (PostgreSQL would cut it)",
			      what, s, FEDERATION_MAX_IDENT);
	return true;
}

/* Option keys are libpq's or postgres_fdw's own: lower-case words. */
static bool option_ok(struct fed *F, const char *kv)
{
	static const char *const ours[] = {"host", "hostaddr", "port", "dbname",
					   "target_session_attrs"};
	const char *eq = strchr(kv, '=');
	size_t kl = eq ? (size_t)(eq - kv) : 0;

	if (eq == NULL || kl == 0)
		return refuse(F, "option \"%s\": give KEY=VALUE", kv);
	for (size_t i = 0; i < kl; i++) {
		if (!((kv[i] >= 'a' && kv[i] <= 'z') || kv[i] == '_'))
			return refuse(F, "option \"%s\": a key is lower-case letters and '_'", kv);
	}
	for (size_t i = 0; i < ARRAY_SIZE(ours); i++) {
		if (strlen(ours[i]) == kl && strncmp(kv, ours[i], kl) == 0)
			return refuse(F,
				      "option \"%.*s\": set by this command (hosts and ports come "
				      "from the configuration; see --dbname, "
				      "--target-session-attrs)",
				      (int)kl, kv);
	}
	if ((kl == 4 && strncmp(kv, "user", 4) == 0) ||
	    (kl == 8 && strncmp(kv, "password", 8) == 0))
		return refuse(F, "option \"%.*s\": postgres_fdw takes it in the user mapping: "
				 "use --user / --password", (int)kl, kv);
	return true;
}

static bool check(struct fed *F)
{
	const struct federation_opts *o = F->o;

	if (F->n == 0)
		return refuse(F, "the configuration has no cluster");
	if (o->dbname == NULL || *o->dbname == '\0')
		return refuse(F, "give the application database of the clusters (--dbname)");
	if (o->user == NULL || *o->user == '\0')
		return refuse(F, "give the user the federation logs in to the clusters as (--user)");
	if (!ident_ok(F, "schema of the views (--into)", F->into) ||
	    !ident_ok(F, "cluster column", F->column) ||
	    (o->local_role && !ident_ok(F, "role of the user mapping", o->local_role)))
		return false;
	for (size_t i = 0; i < F->nschemas; i++) {
		if (!ident_ok(F, "schema", F->schemas[i]))
			return false;
	}
	for (size_t i = 0; i < o->nexcept; i++) {
		if (!ident_ok(F, "table left out (--except)", o->except[i]))
			return false;
	}
	for (size_t i = 0; i < o->ngrants; i++) {
		if (!ident_ok(F, "role given SELECT (--grant)", o->grants[i]))
			return false;
	}
	for (size_t i = 0; i < o->noptions; i++) {
		if (!option_ok(F, o->options[i]))
			return false;
	}
	for (size_t i = 0; i < F->n; i++) {
		if (!ident_ok(F, "server and schema of a cluster (--prefix + cluster name)",
			      F->local[i]))
			return false;
		if (strcmp(F->local[i], F->into) == 0)
			return refuse(F, "the views' schema \"%s\" is also cluster \"%s\"'s "
					 "schema: choose another --into or --prefix",
				      F->into, F->cl[i].name);
		if (F->cl[i].nhosts == 0)
			return refuse(F, "cluster \"%s\" has no hosts", F->cl[i].name);
	}
	return true;
}

/* ARRAY['a', 'b'] of the given strings. */
static void sb_array(struct sb *b, const char *const *v, size_t n)
{
	sb_str(b, "ARRAY[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_str(b, ", ");
		sb_literal(b, v[i]);
	}
	sb_str(b, "]::text[]");
}

/* Wraps body as a DO block, with a dollar tag that does not occur in it. */
static void sb_do(struct sb *b, const char *body)
{
	char tag[32];

	snprintf(tag, sizeof(tag), "$fed$");
	for (unsigned i = 1; strstr(body, tag) != NULL; i++)
		snprintf(tag, sizeof(tag), "$fed%u$", i);
	sb_printf(b, "DO %s\n", tag);
	sb_str(b, body);
	sb_printf(b, "%s;\n", tag);
}

/* Stops before anything is dropped when a name is taken by something not ours. */
static void sb_ownership(struct fed *F, struct sb *b)
{
	struct sb body = {0};
	const char **schemas = calloc(F->n + 1, sizeof(*schemas));

	if (schemas == NULL) {
		b->failed = true;
		return;
	}
	for (size_t i = 0; i < F->n; i++)
		schemas[i] = F->local[i];
	schemas[F->n] = F->into;
	sb_str(&body, "DECLARE\n\tmark CONSTANT text := ");
	sb_literal(&body, FEDERATION_MARK);
	sb_str(&body, ";\n\tobj text;\nBEGIN\n\tFOREACH obj IN ARRAY ");
	sb_array(&body, schemas, F->n + 1);
	sb_str(&body,
	       " LOOP\n"
	       "\t\tIF EXISTS (SELECT FROM pg_namespace WHERE nspname = obj\n"
	       "\t\t\t   AND obj_description(oid, 'pg_namespace') IS DISTINCT FROM mark) THEN\n"
	       "\t\t\tRAISE EXCEPTION 'schema % exists and was not made by tenant-router "
	       "federation', obj\n"
	       "\t\t\t\tUSING HINT = 'Rename or drop it, or choose other names (--into, "
	       "--prefix).';\n"
	       "\t\tEND IF;\n"
	       "\tEND LOOP;\n\tFOREACH obj IN ARRAY ");
	sb_array(&body, schemas, F->n);
	sb_str(&body,
	       " LOOP\n"
	       "\t\tIF EXISTS (SELECT FROM pg_foreign_server WHERE srvname = obj\n"
	       "\t\t\t   AND obj_description(oid, 'pg_foreign_server') IS DISTINCT FROM mark) "
	       "THEN\n"
	       "\t\t\tRAISE EXCEPTION 'foreign server % exists and was not made by "
	       "tenant-router federation', obj\n"
	       "\t\t\t\tUSING HINT = 'Rename or drop it, or choose another --prefix.';\n"
	       "\t\tEND IF;\n"
	       "\tEND LOOP;\nEND\n");
	free(schemas);
	if (body.failed) {
		b->failed = true;
	} else {
		sb_str(b, "-- Refuse to replace a schema or server this command did not make.\n");
		sb_do(b, body.p);
	}
	free(body.p);
}

/* A comma list of the cluster's hosts, or of their ports, as libpq takes them. */
static void sb_hosts(struct sb *b, const struct federation_cluster *c, bool ports)
{
	struct sb v = {0};

	for (size_t j = 0; j < c->nhosts; j++) {
		if (j)
			sb_str(&v, ",");
		if (ports)
			sb_printf(&v, "%u", c->ports[j]);
		else
			sb_str(&v, c->hosts[j]);
	}
	if (v.failed || v.p == NULL)
		b->failed = true;
	else
		sb_literal(b, v.p);
	free(v.p);
}

static void sb_mapping_role(struct fed *F, struct sb *b)
{
	const char *r = F->o->local_role;

	if (r == NULL || strcmp(r, "CURRENT_USER") == 0 || strcmp(r, "current_user") == 0)
		sb_str(b, "CURRENT_USER");
	else if (strcmp(r, "PUBLIC") == 0 || strcmp(r, "public") == 0)
		sb_str(b, "PUBLIC");
	else
		sb_ident(b, r);
}

static void sb_cluster(struct fed *F, struct sb *b, size_t i)
{
	const struct federation_cluster *c = &F->cl[i];
	const struct federation_opts *o = F->o;
	const char *local = F->local[i];

	sb_printf(b, "\n-- cluster %s: ", c->name);
	for (size_t j = 0; j < c->nhosts; j++) {
		bool v6 = strchr(c->hosts[j], ':') != NULL;

		sb_printf(b, "%s%s%s%s:%u", j ? ", " : "", v6 ? "[" : "", c->hosts[j],
			  v6 ? "]" : "", c->ports[j]);
	}
	sb_str(b, "\nDROP SCHEMA IF EXISTS ");
	sb_ident(b, local);
	sb_str(b, " CASCADE;\nDROP SERVER IF EXISTS ");
	sb_ident(b, local);
	sb_str(b, " CASCADE;\nCREATE SERVER ");
	sb_ident(b, local);
	sb_str(b, " FOREIGN DATA WRAPPER postgres_fdw\n\tOPTIONS (host ");
	sb_hosts(b, c, false);
	sb_str(b, ", port ");
	sb_hosts(b, c, true);
	sb_str(b, ", dbname ");
	sb_literal(b, o->dbname);
	sb_str(b, ", target_session_attrs ");
	sb_literal(b, F->attrs);
	for (size_t k = 0; k < o->noptions; k++) {
		const char *kv = o->options[k], *eq = strchr(kv, '=');

		sb_str(b, ", ");
		sb_put(b, kv, (size_t)(eq - kv));
		sb_str(b, " ");
		sb_literal(b, eq + 1);
	}
	sb_str(b, ");\nCOMMENT ON SERVER ");
	sb_ident(b, local);
	sb_str(b, " IS ");
	sb_literal(b, FEDERATION_MARK);
	sb_str(b, ";\nCREATE USER MAPPING FOR ");
	sb_mapping_role(F, b);
	sb_str(b, " SERVER ");
	sb_ident(b, local);
	sb_str(b, "\n\tOPTIONS (user ");
	sb_literal(b, o->user);
	if (o->password) {
		sb_str(b, ", password ");
		sb_literal(b, o->password);
	}
	sb_str(b, ");\nCREATE SCHEMA ");
	sb_ident(b, local);
	sb_str(b, ";\nCOMMENT ON SCHEMA ");
	sb_ident(b, local);
	sb_str(b, " IS ");
	sb_literal(b, FEDERATION_MARK);
	sb_str(b, ";\n");
	for (size_t k = 0; k < F->nschemas; k++) {
		sb_str(b, "IMPORT FOREIGN SCHEMA ");
		sb_ident(b, F->schemas[k]);
		if (o->nexcept) {
			sb_str(b, " EXCEPT (");
			for (size_t e = 0; e < o->nexcept; e++) {
				if (e)
					sb_str(b, ", ");
				sb_ident(b, o->except[e]);
			}
			sb_str(b, ")");
		}
		sb_str(b, " FROM SERVER ");
		sb_ident(b, local);
		sb_str(b, " INTO ");
		sb_ident(b, local);
		sb_str(b, ";\n");
	}
}

/*
 * The views, from the catalog after the imports: per table, the columns that
 * every cluster having it has with the same type (in the first one's order),
 * and one SELECT per such cluster. What is left out is said in a WARNING.
 */
static const char views_code[] =
	"\ttbl name;\n"
	"\tcols text;\n"
	"\tleft_out text;\n"
	"\tparts text[];\n"
	"\tnviews int := 0;\n"
	"BEGIN\n"
	"\tFOR tbl IN\n"
	"\t\tSELECT DISTINCT c.relname FROM pg_class c\n"
	"\t\tJOIN pg_namespace s ON s.oid = c.relnamespace\n"
	"\t\tWHERE s.nspname = ANY (local_schemas) AND c.relkind = 'f'\n"
	"\t\tORDER BY 1\n"
	"\tLOOP\n"
	"\t\tIF EXISTS (SELECT FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid\n"
	"\t\t\t   JOIN pg_namespace s ON s.oid = c.relnamespace\n"
	"\t\t\t   WHERE s.nspname = ANY (local_schemas) AND c.relname = tbl AND c.relkind = 'f'\n"
	"\t\t\t     AND a.attname = cluster_column AND a.attnum > 0 AND NOT a.attisdropped) THEN\n"
	"\t\t\tRAISE WARNING 'no view %.%: the table has a column named % (choose another "
	"--cluster-column)',\n"
	"\t\t\t\tinto_schema, tbl, cluster_column;\n"
	"\t\t\tCONTINUE;\n"
	"\t\tEND IF;\n"
	"\t\tWITH have AS (\n"
	"\t\t\tSELECT s.nspname, a.attname, a.attnum,\n"
	"\t\t\t       format_type(a.atttypid, a.atttypmod) AS typ\n"
	"\t\t\tFROM pg_attribute a\n"
	"\t\t\tJOIN pg_class c ON c.oid = a.attrelid\n"
	"\t\t\tJOIN pg_namespace s ON s.oid = c.relnamespace\n"
	"\t\t\tWHERE s.nspname = ANY (local_schemas) AND c.relname = tbl AND c.relkind = 'f'\n"
	"\t\t\t  AND a.attnum > 0 AND NOT a.attisdropped\n"
	"\t\t), per_column AS (\n"
	"\t\t\tSELECT attname, count(*) AS copies, min(attnum) AS pos\n"
	"\t\t\tFROM have GROUP BY attname, typ\n"
	"\t\t)\n"
	"\t\tSELECT string_agg(quote_ident(p.attname), ', ' ORDER BY p.pos)\n"
	"\t\t\t       FILTER (WHERE p.copies = w.nclusters),\n"
	"\t\t       string_agg(DISTINCT p.attname::text, ', ') FILTER (WHERE p.copies < "
	"w.nclusters)\n"
	"\t\tINTO cols, left_out\n"
	"\t\tFROM per_column p,\n"
	"\t\t     (SELECT count(DISTINCT nspname) AS nclusters FROM have) w;\n"
	"\t\tIF cols IS NULL THEN\n"
	"\t\t\tRAISE WARNING 'no view %.%: no column is the same on every cluster that has "
	"it',\n"
	"\t\t\t\tinto_schema, tbl;\n"
	"\t\t\tCONTINUE;\n"
	"\t\tEND IF;\n"
	"\t\tIF left_out IS NOT NULL THEN\n"
	"\t\t\tRAISE WARNING 'view %.% leaves out columns that differ between clusters: %',\n"
	"\t\t\t\tinto_schema, tbl, left_out;\n"
	"\t\tEND IF;\n"
	"\t\tparts := '{}';\n"
	"\t\tFOR i IN 1 .. array_length(local_schemas, 1) LOOP\n"
	"\t\t\tIF EXISTS (SELECT FROM pg_class c JOIN pg_namespace s ON s.oid = "
	"c.relnamespace\n"
	"\t\t\t\t   WHERE s.nspname = local_schemas[i] AND c.relname = tbl\n"
	"\t\t\t\t     AND c.relkind = 'f') THEN\n"
	"\t\t\t\tparts := parts || format('SELECT %L::text AS %I, %s FROM %I.%I',\n"
	"\t\t\t\t\tcluster_names[i], cluster_column, cols, local_schemas[i], tbl);\n"
	"\t\t\tEND IF;\n"
	"\t\tEND LOOP;\n"
	"\t\tIF array_length(parts, 1) < array_length(local_schemas, 1) THEN\n"
	"\t\t\tRAISE NOTICE 'view %.% covers % of % clusters (the others have no such table)',\n"
	"\t\t\t\tinto_schema, tbl, array_length(parts, 1), array_length(local_schemas, 1);\n"
	"\t\tEND IF;\n"
	"\t\tEXECUTE format('CREATE VIEW %I.%I AS %s', into_schema, tbl,\n"
	"\t\t\tarray_to_string(parts, E'\\nUNION ALL '));\n"
	"\t\tnviews := nviews + 1;\n"
	"\tEND LOOP;\n"
	"\tRAISE NOTICE 'federation: % views in schema %', nviews, into_schema;\n"
	"END\n";

static void sb_views(struct fed *F, struct sb *b)
{
	struct sb body = {0};
	const char **names = calloc(F->n, sizeof(*names));

	if (names == NULL) {
		b->failed = true;
		return;
	}
	for (size_t i = 0; i < F->n; i++)
		names[i] = F->cl[i].name;
	sb_str(&body, "DECLARE\n\tcluster_names CONSTANT text[] := ");
	sb_array(&body, names, F->n);
	sb_str(&body, ";\n\tlocal_schemas CONSTANT text[] := ");
	sb_array(&body, (const char *const *)F->local, F->n);
	sb_str(&body, ";\n\tinto_schema CONSTANT text := ");
	sb_literal(&body, F->into);
	sb_str(&body, ";\n\tcluster_column CONSTANT text := ");
	sb_literal(&body, F->column);
	sb_str(&body, ";\n");
	sb_str(&body, views_code);
	free(names);
	if (body.failed)
		b->failed = true;
	else
		sb_do(b, body.p);
	free(body.p);
}

static void sb_script(struct fed *F, struct sb *b)
{
	const struct federation_opts *o = F->o;

	sb_str(b, "-- tenant-router federation: read-only views over every cluster");
	if (o->source) {
		sb_str(b, " of ");
		/* A comment line: a newline in the path would end it. */
		for (const char *p = o->source; *p; p++)
			sb_put(b, *p == '\n' || *p == '\r' ? "?" : p, 1);
	}
	sb_str(b, ".\n"
		  "-- Run it in a database of its own, not on a cluster. Running it again "
		  "replaces\n"
		  "-- everything it made (servers, user mappings, schemas, views), in one "
		  "transaction;\n"
		  "-- every cluster must be reachable.\n");
	if (o->password == NULL)
		sb_str(b, "-- No password was given (--password): fine for a superuser whose "
			  "clusters trust it\n"
			  "-- or whose server has a passfile; anyone else needs one in the user "
			  "mapping:\n"
			  "--   ALTER USER MAPPING FOR ... SERVER ... OPTIONS (ADD password "
			  "'...');\n");
	sb_str(b, "BEGIN;\n\nCREATE EXTENSION IF NOT EXISTS postgres_fdw;\n\n");
	sb_ownership(F, b);
	sb_str(b, "DROP SCHEMA IF EXISTS ");
	sb_ident(b, F->into);
	sb_str(b, " CASCADE;\n");
	for (size_t i = 0; i < F->n; i++)
		sb_cluster(F, b, i);
	sb_str(b, "\n-- One view per table, with the cluster each row comes from.\nCREATE SCHEMA ");
	sb_ident(b, F->into);
	sb_str(b, ";\nCOMMENT ON SCHEMA ");
	sb_ident(b, F->into);
	sb_str(b, " IS ");
	sb_literal(b, FEDERATION_MARK);
	sb_str(b, ";\n");
	sb_views(F, b);
	for (size_t i = 0; i < o->ngrants; i++) {
		sb_str(b, "GRANT USAGE ON SCHEMA ");
		sb_ident(b, F->into);
		sb_str(b, " TO ");
		sb_ident(b, o->grants[i]);
		sb_str(b, ";\nGRANT SELECT ON ALL TABLES IN SCHEMA ");
		sb_ident(b, F->into);
		sb_str(b, " TO ");
		sb_ident(b, o->grants[i]);
		sb_str(b, ";\n");
	}
	sb_str(b, "\nCOMMIT;\n");
}

char *federation_sql(const struct federation_cluster *cl, size_t n,
		     const struct federation_opts *o, char *err, size_t errlen)
{
	static const char *const public_only[] = {"public"};
	struct fed F = {.cl = cl, .n = n, .o = o, .err = err, .errlen = errlen};
	struct sb b = {0};
	bool ok;

	if (errlen)
		err[0] = '\0';
	F.into = o->into ? o->into : "federation";
	F.prefix = o->prefix ? o->prefix : "cluster_";
	F.column = o->cluster_column ? o->cluster_column : "cluster";
	F.attrs = o->target_session_attrs ? o->target_session_attrs : "read-write";
	F.schemas = o->nschemas ? o->schemas : public_only;
	F.nschemas = o->nschemas ? o->nschemas : 1;
	F.local = calloc(n ? n : 1, sizeof(*F.local));
	if (F.local == NULL)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		F.local[i] = malloc(strlen(F.prefix) + strlen(cl[i].name) + 1);
		if (F.local[i] == NULL)
			goto oom;
		strcpy(F.local[i], F.prefix);
		strcat(F.local[i], cl[i].name);
	}
	ok = check(&F);
	if (ok)
		sb_script(&F, &b);
	for (size_t i = 0; i < n; i++)
		free(F.local[i]);
	free(F.local);
	if (!ok || b.failed) {
		if (ok)
			snprintf(err, errlen, "out of memory");
		free(b.p);
		return NULL;
	}
	return b.p;
oom:
	if (F.local) {
		for (size_t i = 0; i < n; i++)
			free(F.local[i]);
	}
	free(F.local);
	snprintf(err, errlen, "out of memory");
	return NULL;
}
