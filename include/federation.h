/*
 * federation.h - the SQL of a read federation over every cluster (pure).
 *
 * `tenant-router federation` builds one script for a separate database:
 * postgres_fdw, a foreign server and a user mapping per cluster, the
 * cluster's application schemas imported into a local schema of its own,
 * and one UNION ALL view per table with a column naming the cluster. The
 * views are made by a PL/pgSQL block from the local catalog after the
 * imports, so the same script serves print mode and --apply. Re-running it
 * replaces everything it made before, and refuses to touch a schema or
 * server of the same name that it did not make.
 */
#ifndef TR_FEDERATION_H
#define TR_FEDERATION_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1): longer ones are refused. */
#define FEDERATION_MAX_IDENT 63

/* The comment that marks a schema or server as made by this script. */
#define FEDERATION_MARK "managed by tenant-router federation"

struct federation_cluster {
	const char *name;	  /* borrowed: the configuration's name, the views' cluster value */
	size_t nhosts;		  /* at least 1 */
	const char *const *hosts; /* borrowed: nhosts names or addresses (no brackets) */
	const uint16_t *ports;	  /* borrowed: nhosts ports */
};

/* Every pointer is borrowed; NULL (or a count of 0) takes the default given. */
struct federation_opts {
	const char *source;			    /* the configuration file, for a comment */
	const char *dbname;			    /* the application database (required) */
	const char *const *schemas;		    /* remote schemas to import; none: public */
	size_t nschemas;
	const char *const *except;		    /* tables left out of every import */
	size_t nexcept;
	const char *user;			    /* remote user of the user mapping (required) */
	const char *password;			    /* NULL: the mapping carries none */
	const char *local_role;			    /* whose mapping: a role or PUBLIC; CURRENT_USER */
	const char *into;			    /* the views' schema: federation */
	const char *prefix;			    /* of servers and foreign schemas: cluster_ */
	const char *cluster_column;		    /* the views' column: cluster */
	const char *target_session_attrs;	    /* libpq's, per server: read-write */
	const char *const *options;		    /* more server options, "key=value" */
	size_t noptions;
	const char *const *grants;		    /* roles given SELECT on the views */
	size_t ngrants;
};

/*
 * The whole script (one transaction), NUL-terminated; the caller frees it.
 * NULL with the reason in err when an option is unusable (a missing dbname
 * or user, a name longer than FEDERATION_MAX_IDENT, an option key this
 * command sets itself, two names that would collide) or out of memory. The
 * password appears in the script only when o->password is given.
 */
char *federation_sql(const struct federation_cluster *cl, size_t n,
		     const struct federation_opts *o, char *err, size_t errlen) MUSTCHECK;

/*
 * PostgreSQL's quote_ident() and quote_literal() for C strings: an
 * identifier is double-quoted unless it is lower-case letters, digits and
 * '_' (not first a digit) and no keyword PostgreSQL reserves in any way; a
 * literal is single-quoted with ' doubled, and written E'...' with \ doubled
 * when it holds a backslash, so it reads the same whatever
 * standard_conforming_strings says. The caller frees the result; NULL when
 * out of memory.
 */
char *federation_quote_ident(const char *s) MUSTCHECK;
char *federation_quote_literal(const char *s) MUSTCHECK;

#endif /* TR_FEDERATION_H */
