/*
 * tenant_guard.c - a PostgreSQL 15 library that owns the tenant setting.
 *
 * tenant-router's stickiness guard reads SQL on the client side, so it
 * cannot see code that runs on the server: a plpgsql function or DO block
 * calling set_config(), a FunctionCall message, a function's SET clause.
 * Loaded into the server (shared_preload_libraries, or
 * session_preload_libraries), this library defines the tenant setting
 * itself (its name is tenant_guard.key, default app.tenant_id) with a check
 * hook, so every path that changes it goes through us:
 *
 *  - values applied while the session starts (the startup packet, ALTER
 *    ROLE/DATABASE ... SET, postgresql.conf) are accepted: PostgreSQL gives
 *    them sources up to PGC_S_CLIENT, which nothing after login can use;
 *  - after login, a change to another value is refused with 42501. Setting
 *    the value the session already has is a no-op and allowed (tenant-router
 *    in query mode replays the client's own SET of the tenant it routed on);
 *  - a session that started without a tenant may set one once (unless
 *    tenant_guard.secret is set); from then on it is fixed the same way;
 *  - with tenant_guard.secret set, "VALUE:HMAC" (hex HMAC-SHA256 of VALUE)
 *    is accepted as a change to VALUE, for a router that moves a pooled
 *    server connection from one tenant to another;
 *  - RESET and SET ... TO DEFAULT of the key are refused (a ProcessUtility
 *    hook: PostgreSQL restores the reset value without calling check hooks).
 *
 * What it does not do: it cannot stop a superuser (who can load any code),
 * and set_config(key, NULL, ...), RESET ALL and DISCARD ALL still return the
 * setting to its login value, which is harmless because the session stays
 * fixed to its tenant. It does not authenticate tenants: whoever logs in
 * chooses the tenant in the startup packet, as before.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "common/hmac.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

#define TG_HMAC_LEN 32 /* SHA-256 */

void _PG_init(void);

/* tenant_guard.key and tenant_guard.secret (owned by guc.c). */
static char *guard_key;
static char *guard_secret;
/* The tenant setting itself (owned by guc.c). */
static char *tenant_value;
/* The key as it was when we defined the setting: later reloads do not move us. */
static char key_name[NAMEDATALEN * 2];
/*
 * The session's tenant, fixed at the first change attempt after login
 * (the value then, or what a tenant-less session sets first). Kept apart
 * from tenant_value because a rollback or RESET ALL moves that back.
 */
static bool fixed;
static char fixed_value[1024];
static ProcessUtility_hook_type prev_utility;

/* A name PostgreSQL takes as a custom setting: prefix.name, identifier characters. */
static bool check_key(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;
	bool dot = false;

	if (s == NULL || strlen(s) >= sizeof(key_name) || s[0] == '.' ||
	    pg_strncasecmp(s, "tenant_guard.", 13) == 0)
		goto bad;
	for (const char *p = s; *p; p++) {
		if (*p == '.') {
			if (p[1] == '\0' || p[1] == '.')
				goto bad;
			dot = true;
		} else if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '$')) {
			goto bad;
		}
	}
	if (dot)
		return true;
bad:
	GUC_check_errdetail("tenant_guard.key must name a custom setting such as app.tenant_id.");
	return false;
}

/* Is text "VALUE:HMAC" with a valid signature? Then *vlen is VALUE's length. */
static bool signed_value(const char *text, size_t *vlen, bool *looks_signed)
{
	const char *colon = strrchr(text, ':');
	uint8 mac[TG_HMAC_LEN];
	uint8 want[TG_HMAC_LEN];
	pg_hmac_ctx *ctx;
	uint8 diff = 0;
	bool ok;

	*looks_signed = false;
	if (colon == NULL || strlen(colon + 1) != 2 * TG_HMAC_LEN ||
	    strspn(colon + 1, "0123456789abcdefABCDEF") != 2 * TG_HMAC_LEN)
		return false;
	*looks_signed = true;
	for (int i = 0; i < TG_HMAC_LEN; i++) {
		char hex[3] = {colon[1 + 2 * i], colon[2 + 2 * i], '\0'};

		want[i] = (uint8)strtoul(hex, NULL, 16);
	}
	*vlen = (size_t)(colon - text);
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, (const uint8 *)guard_secret, strlen(guard_secret)) == 0 &&
	     pg_hmac_update(ctx, (const uint8 *)text, *vlen) == 0 &&
	     pg_hmac_final(ctx, mac, sizeof(mac)) == 0;
	pg_hmac_free(ctx);
	/* Compare every byte, so the time taken says nothing about where they differ. */
	for (int i = 0; i < TG_HMAC_LEN; i++)
		diff |= mac[i] ^ want[i];
	return ok && diff == 0;
}

static void fix(const char *v)
{
	fixed = true;
	strlcpy(fixed_value, v, sizeof(fixed_value));
}

static bool refuse(const char *why)
{
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("tenant_guard: %s is fixed for this session; open a new connection for "
			 "another tenant",
			 key_name);
	if (why)
		GUC_check_errdetail("%s", why);
	GUC_check_errhint("The tenant is set when the connection starts (options -c %s=...), or "
			  "once by a session that started without one.",
			  key_name);
	return false;
}

static bool check_tenant(char **newval, void **extra, GucSource source)
{
	const char *v = *newval ? *newval : "";
	bool secret = guard_secret && guard_secret[0];
	bool looks_signed = false;
	size_t vlen;

	/*
	 * Sources up to PGC_S_CLIENT are the server's files, role and database
	 * defaults and the startup packet: only login applies them (and
	 * define_custom_variable re-applies them, with the same sources, when
	 * session_preload_libraries loads us after login). A parallel worker
	 * copies its leader's value, which passed here in the leader.
	 */
	if (source <= PGC_S_CLIENT || InitializingParallelWorker)
		return true;
	/*
	 * ALTER ROLE/DATABASE ... SET and CREATE FUNCTION ... SET validate with
	 * PGC_S_TEST. A stored default would let a user choose the tenant of
	 * their next connection that has none in its startup packet.
	 */
	if (source == PGC_S_TEST) {
		if (superuser())
			return true;
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("tenant_guard: only a superuser may store a value for %s", key_name);
		return false;
	}
	if (!fixed && tenant_value && tenant_value[0])
		fix(tenant_value);
	if (secret && signed_value(v, &vlen, &looks_signed)) {
		char *plain = malloc(vlen + 1);

		/* guc.c owns *newval (malloc'd): swap in the value without its signature. */
		if (plain == NULL)
			return refuse("out of memory");
		memcpy(plain, v, vlen);
		plain[vlen] = '\0';
		free(*newval);
		*newval = plain;
		fix(plain);
		return true;
	}
	if (looks_signed && secret)
		return refuse("The value's signature does not match tenant_guard.secret.");
	if (fixed)
		return strcmp(v, fixed_value) == 0 ? true : refuse(NULL);
	if (v[0] == '\0')
		return true;
	if (secret)
		return refuse("With tenant_guard.secret set, only a signed value may set it after "
			      "login.");
	/* A session that logged in without a tenant chooses one, once. */
	fix(v);
	return true;
}

/* RESET key and SET key TO DEFAULT restore the reset value without calling check_tenant. */
static void guard_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			  ProcessUtilityContext context, ParamListInfo params,
			  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node *n = pstmt->utilityStmt;

	if (IsA(n, VariableSetStmt)) {
		VariableSetStmt *s = (VariableSetStmt *)n;

		if ((s->kind == VAR_RESET || s->kind == VAR_SET_DEFAULT) && s->name &&
		    pg_strcasecmp(s->name, key_name) == 0)
			ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("tenant_guard: %s is fixed for this session; open a new "
					"connection for another tenant",
					key_name),
				 errdetail("RESET and SET ... TO DEFAULT of %s are refused.",
					   key_name)));
	}
	if (prev_utility)
		prev_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest,
			     qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
					queryEnv, dest, qc);
}

void _PG_init(void)
{
	/*
	 * PGC_SIGHUP: only postgresql.conf (or ALTER SYSTEM) sets them, never a
	 * session or its startup packet. The key is read once, here.
	 */
	DefineCustomStringVariable("tenant_guard.key", "Name of the setting that carries the tenant.",
				   "Fixed for each session after login. Read when the library loads.",
				   &guard_key, "app.tenant_id", PGC_SIGHUP, 0, check_key, NULL,
				   NULL);
	DefineCustomStringVariable("tenant_guard.secret",
				   "Key for signed tenant values (VALUE:HMAC-SHA256 in hex).",
				   "Empty: no signed changes, and a session without a tenant may set "
				   "one once.",
				   &guard_secret, "", PGC_SIGHUP,
				   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, NULL,
				   NULL, NULL);
	MarkGUCPrefixReserved("tenant_guard");
	strlcpy(key_name, guard_key, sizeof(key_name));
	DefineCustomStringVariable(key_name, "The session's tenant (owned by tenant_guard).",
				   "Set at login; fixed for the session.", &tenant_value, "",
				   PGC_USERSET, 0, check_tenant, NULL, NULL);
	prev_utility = ProcessUtility_hook;
	ProcessUtility_hook = guard_utility;
}
