/*
 * admin.h - the admin console's language and its answers (pure: no I/O).
 *
 * admin_parse() reads one console statement (the text of a simple-protocol
 * Query message): keywords are case-insensitive, a trailing ';' is allowed,
 * tenants are SQL string literals ('it''s' is "it's"), clusters are
 * identifiers (bare or "double-quoted") or string literals, client ids are
 * decimal numbers. Anything else is a syntax error with a hint (42601).
 *
 * struct admin_result builds the reply as wire messages: RowDescription
 * (every column text), DataRow, CommandComplete, EmptyQueryResponse,
 * ErrorResponse, ReadyForQuery. Its buffer grows up to ADMIN_RESULT_MAX;
 * past that (or out of memory) it is marked failed, once, and the caller
 * answers with an error instead.
 */
#ifndef TR_ADMIN_H
#define TR_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* The virtual database that is the console. */
#define ADMIN_DATABASE "tenant_router"
/* The longest statement looked at (longer ones are refused: no command is near this). */
#define ADMIN_MAX_STATEMENT 4096
#define ADMIN_MAX_TENANT    255
#define ADMIN_MAX_CLUSTER   63
/* The most a reply may take (a SHOW CLIENTS of a million sessions is about 150 MB: cut). */
#define ADMIN_RESULT_MAX  (64u << 20)
#define ADMIN_MAX_COLUMNS 16

enum admin_cmd {
	ADMIN_EMPTY, /* only blanks and ';': EmptyQueryResponse */
	ADMIN_SHOW_CLUSTERS,
	ADMIN_SHOW_HOSTS,
	ADMIN_SHOW_CLIENTS,
	ADMIN_SHOW_TENANTS,
	ADMIN_SHOW_STATS,
	ADMIN_SHOW_CONFIG,
	ADMIN_SHOW_VERSION,
	ADMIN_SHOW_HELP,
	ADMIN_ROUTE,
	ADMIN_PIN,
	ADMIN_UNPIN,
	ADMIN_PAUSE,
	ADMIN_RESUME,
	ADMIN_KILL_TENANT,
	ADMIN_KILL_CLIENT,
	ADMIN_RELOAD,
	ADMIN_SHUTDOWN,
};

struct admin_stmt {
	enum admin_cmd cmd;
	char tenant[ADMIN_MAX_TENANT + 1]; /* ROUTE, PIN, UNPIN, PAUSE, RESUME, KILL TENANT */
	size_t tlen;
	char cluster[ADMIN_MAX_CLUSTER + 1]; /* PIN */
	uint64_t id;                         /* KILL CLIENT */
	bool force;                          /* PIN, UNPIN */
};

/* Why a statement was refused: message and hint for an ErrorResponse (42601). */
struct admin_error {
	char message[320];
	char hint[320];
};

/*
 * Parses one statement of len bytes (need not be NUL-terminated). Returns
 * true with *st filled, or false with *err filled. Never reads past len.
 */
bool admin_parse(const char *sql, size_t len, struct admin_stmt *st,
                 struct admin_error *err) MUSTCHECK;

/* The command's tag for CommandComplete ("SHOW", "PIN", "KILL", ...). */
const char *admin_cmd_tag(enum admin_cmd cmd);

/* One line per command, for SHOW HELP: the syntax and what it does. */
struct admin_help {
	const char *syntax, *what;
};
const struct admin_help *admin_help(size_t *n);

/* A reply being built. Zero it, or admin_result_init(); admin_result_free() frees. */
struct admin_result {
	uint8_t *p; /* owned */
	size_t len, cap;
	size_t ncols;  /* of the current row description, 0: none */
	uint64_t rows; /* DataRows since the last RowDescription */
	bool failed;   /* out of memory or past ADMIN_RESULT_MAX: discard p */
};

void admin_result_init(struct admin_result *r);
void admin_result_free(struct admin_result *r);
/* Forgets what was built (keeps the buffer). */
void admin_result_reset(struct admin_result *r);

/* RowDescription of n text columns named names[0..n) (n <= ADMIN_MAX_COLUMNS). */
void admin_result_columns(struct admin_result *r, const char *const *names, size_t n);
/* A DataRow of ncols values; a NULL value is SQL NULL. */
void admin_result_row(struct admin_result *r, const char *const *vals);
/* CommandComplete: tag, and for "SHOW" the row count is added ("SHOW 3"). */
void admin_result_complete(struct admin_result *r, const char *tag);
void admin_result_empty_query(struct admin_result *r);
/* ErrorResponse with severity ERROR; message gets the "tenant-router: " prefix. */
void admin_result_error(struct admin_result *r, const char *sqlstate, const char *message,
                        const char *hint);
/* NoticeResponse (severity NOTICE), e.g. what PIN FORCE left on the old cluster. */
void admin_result_notice(struct admin_result *r, const char *message);
/* ReadyForQuery, transaction status 'I' (the console has no transactions). */
void admin_result_ready(struct admin_result *r);

/*
 * Whether a tenant may be written to a pins file line ("TENANT CLUSTER"):
 * 1 to ADMIN_MAX_TENANT bytes, no blank, '#', control character or NUL.
 */
bool admin_tenant_is_pinnable(const char *t, size_t len);

#endif /* TR_ADMIN_H */
