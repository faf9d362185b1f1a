/*
 * startup.h - the startup packet: classification, parameters, the `options`
 * string, tenant extraction, and rebuilding the packet we forward (pure).
 *
 * startup_parse() takes one complete, framed packet and returns pointers into
 * it: the packet must outlive the struct startup.
 */
#ifndef TR_STARTUP_H
#define TR_STARTUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "proto.h"

#define STARTUP_MAX_PARAMS     128
#define STARTUP_MAX_TENANT_LEN 255

enum startup_kind { STARTUP_V3, STARTUP_SSL, STARTUP_GSSENC, STARTUP_CANCEL };

struct startup_param {
	const char *key; /* borrowed: packet, NUL-terminated */
	size_t klen;
	const char *val; /* borrowed: packet, NUL-terminated */
	size_t vlen;
};

struct startup {
	enum startup_kind kind;
	uint32_t code;		/* the request code or protocol version, as sent */
	uint16_t major, minor;	/* STARTUP_V3 */
	uint32_t cancel_pid;	/* STARTUP_CANCEL */
	const uint8_t *cancel_key; /* borrowed: packet */
	size_t cancel_key_len;
	size_t nparams;
	struct startup_param params[STARTUP_MAX_PARAMS];
};

/*
 * Parses one complete startup-family packet of exactly len bytes (as framed
 * by proto_frame_startup). PROTO_BAD sets *why to a static, client-presentable
 * reason: unknown codes and protocol versions other than 3.x, missing
 * terminators, trailing bytes, empty or duplicate keys, non-UTF-8 text.
 */
enum proto_status startup_parse(const uint8_t *buf, size_t len, struct startup *st,
				const char **why);

/* The value of a parameter (exact key match), or NULL. */
const struct startup_param *startup_get(const struct startup *st, const char *key);

/* Where a tenant may come from (bit set). */
enum {
	TENANT_SRC_OPTIONS = 1u << 0,	/* options=-c key=value */
	TENANT_SRC_PARAMETER = 1u << 1, /* a startup parameter named key */
	TENANT_SRC_USER = 1u << 2,	/* user=name<sep>tenant */
	TENANT_SRC_DATABASE = 1u << 3,	/* database=name<sep>tenant */
	TENANT_SRC_QUERY = 1u << 4,	/* the first query (the session code, not this module) */
};

struct tenant_rule {
	const char *key;  /* borrowed: config; e.g. "app.tenant_id" */
	unsigned sources; /* TENANT_SRC_* */
	char separator;	  /* for the user/database sources */
};

enum tenant_result {
	TENANT_FOUND,
	TENANT_NONE,	 /* no source carries a tenant (or only an empty one) */
	TENANT_CONFLICT, /* sources disagree: we refuse rather than guess */
	TENANT_TOO_LONG,
};

struct tenant {
	char name[STARTUP_MAX_TENANT_LEN + 1]; /* NUL-terminated copy */
	size_t len;
	unsigned source;     /* the TENANT_SRC_* that found it first */
	bool strip_user;     /* the user parameter carries a suffix to remove */
	bool strip_database; /* the database parameter carries a suffix to remove */
};

enum tenant_result startup_find_tenant(const struct startup *st, const struct tenant_rule *rule,
				       struct tenant *t);

/*
 * Calls fn(arg, name, namelen, value, valuelen) for each `-c name=value`,
 * `-cname=value` and `--name=value` in an options string, after PostgreSQL's
 * splitting rules (whitespace separates, backslash takes the next character
 * literally). Names are passed as written. Stops early if fn returns false.
 */
typedef bool (*startup_option_fn)(void *arg, const char *name, size_t nlen, const char *val,
				  size_t vlen);
void startup_each_option(const char *options, size_t len, startup_option_fn fn, void *arg);

/*
 * True if name (as a GUC name: case-insensitive, '-' same as '_') equals key.
 */
bool startup_guc_name_eq(const char *name, size_t nlen, const char *key);

/*
 * Builds the StartupMessage to forward: the client's parameters in order,
 * with the tenant suffix removed from user/database where t says so, and
 * the tenant added as parameter rule->key when it came from such a suffix.
 * Returns the packet length, or 0 if it does not fit in cap.
 */
size_t startup_build_forward(const struct startup *st, const struct tenant_rule *rule,
			     const struct tenant *t, uint8_t *out, size_t cap) MUSTCHECK;

#endif /* TR_STARTUP_H */
