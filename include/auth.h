/*
 * auth.h - passwords and proofs (pure; OpenSSL's primitives, no I/O except
 * reading the files named here).
 *
 * Used when the router authenticates a client itself (tenant source
 * `query`: the server is not known until the first query) and then logs in
 * to the chosen coordinator on the client's behalf:
 *  - secrets as PostgreSQL stores them (pg_authid.rolpassword): plaintext,
 *    "md5<32 hex>", or "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>";
 *  - PgBouncer's userlist.txt ("user" "secret" per line, "" escapes ");
 *  - a libpq passfile (host:port:db:user:password, * wildcards, \ escapes);
 *  - md5 challenge/response;
 *  - SCRAM-SHA-256 (RFC 5802, RFC 7677), both as the server (checking a
 *    client's proof against a verifier, and recovering its ClientKey) and as
 *    the client (with a password, or with a ClientKey/ServerKey pair taken
 *    from the client's own proof, as PgBouncer does, which works only when
 *    the server holds the same verifier: same salt and iterations).
 * No channel binding: the router ends the client's TLS.
 */
#ifndef TR_AUTH_H
#define TR_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define SCRAM_KEY_LEN	 32
#define SCRAM_MAX_SALT	 64 /* bytes, decoded */
#define AUTH_MAX_SECRET	 512
#define AUTH_MAX_USER	 64 /* NAMEDATALEN */
#define SCRAM_ITERATIONS 4096 /* for verifiers we derive from a plaintext password */

enum secret_kind { SECRET_NONE, SECRET_PLAIN, SECRET_MD5, SECRET_SCRAM };

struct secret {
	enum secret_kind kind;
	char plain[AUTH_MAX_SECRET]; /* SECRET_PLAIN */
	char md5[36];		     /* SECRET_MD5: "md5" + 32 lowercase hex + NUL */
	uint32_t iterations;	     /* SECRET_SCRAM */
	uint8_t salt[SCRAM_MAX_SALT];
	size_t saltlen;
	uint8_t stored_key[SCRAM_KEY_LEN];
	uint8_t server_key[SCRAM_KEY_LEN];
};

/*
 * Reads a stored secret: "md5" + 32 hex is md5, a well-formed
 * "SCRAM-SHA-256$..." is SCRAM, "" is SECRET_NONE, anything else is a
 * plaintext password (as PostgreSQL and PgBouncer read it). False only for
 * a string that starts "SCRAM-SHA-256$" but is malformed, or is too long.
 */
bool secret_parse(const char *text, struct secret *out) MUSTCHECK;
/* Wipes a secret (OPENSSL_cleanse). */
void secret_clear(struct secret *s);

/* userlist.txt: `"user" "secret"` lines; blank lines and ';' or '#' comments. */
struct userlist;
/*
 * NULL with "FILE:LINE: reason" (or "FILE: reason") in err, one line per
 * problem, if any line is malformed. A user listed twice: the last line wins,
 * as in PgBouncer. The text after the second quoted string is ignored.
 */
struct userlist *userlist_load(const char *path, char *err, size_t errlen) MUSTCHECK;
/* Copies the user's secret into *out; false (out->kind = SECRET_NONE) if absent. */
bool userlist_get(const struct userlist *ul, const char *user, struct secret *out);
size_t userlist_count(const struct userlist *ul);
void userlist_free(struct userlist *ul);

/*
 * The password for (host, port, db, user) from a libpq passfile, first
 * matching line wins, as libpq reads it. False if no line matches, the
 * file cannot be read, or the first matching password does not fit in cap
 * (out is then "").
 */
bool passfile_lookup(const char *path, const char *host, unsigned port, const char *db,
		     const char *user, char *out, size_t cap);

/* "md5" + hex(md5(password || user)): what PostgreSQL stores. */
void auth_md5_hash(const char *password, const char *user, char out[36]);
/* "md5" + hex(md5(hex part of md5hash || salt)): what a client sends. */
void auth_md5_salted(const char *md5hash, const uint8_t salt[4], char out[36]);
/*
 * Checks a client's md5 response against a stored secret (md5 or
 * plaintext; SCRAM cannot answer md5). Constant-time compare.
 */
bool auth_md5_check(const struct secret *s, const char *user, const uint8_t salt[4],
		    const char *response);

/* Fills buf with n cryptographically random bytes; false on failure. */
bool auth_random(void *buf, size_t n) MUSTCHECK;

/*
 * For a user without a SCRAM verifier (unknown, or md5 only): gives sec a
 * salt made from the user name and a per-process key, which the mock SCRAM
 * exchange then uses, so that trying twice shows the same salt, as for a
 * real user (PostgreSQL does the same). No-op for SCRAM and plaintext.
 */
void auth_mock_salt(const char *user, struct secret *sec);

/* SCRAM, the router as server. Messages are text without a NUL. */
struct scram_server {
	struct secret secret; /* copy; a plaintext one is turned into a verifier */
	bool mock;	      /* unknown user: go through the motions, then fail */
	char client_first_bare[512];
	char server_first[512];
	char nonce[128]; /* client nonce + ours */
	uint8_t client_key[SCRAM_KEY_LEN]; /* recovered from a valid proof */
	bool have_client_key;
	char gs2_flag; /* 'n' or 'y': the client's gs2 header was "n,," or "y,," */
};

/*
 * The client's SASLInitialResponse data (client-first-message, gs2 header
 * "n,," or "y,,"; "p=" is refused) -> the server-first-message in out.
 * sec NULL or SECRET_NONE/SECRET_MD5 runs a mock exchange that fails at the
 * end, as PostgreSQL does, so an outsider cannot tell which users exist.
 * Returns 0, or -1 with a client-presentable reason in *why.
 */
int scram_server_first(struct scram_server *st, const struct secret *sec, const uint8_t *data,
		       size_t len, char *out, size_t cap, size_t *outlen, const char **why);
/*
 * The client-final-message -> 1 with the server-final-message ("v=...") in
 * out and st->client_key set; 0 for a wrong password (or a mock exchange);
 * -1 for a malformed message (*why). On 0 and -1 st is wiped; after 1 it
 * still holds the verifier and ClientKey: wipe it (OPENSSL_cleanse) when done.
 */
int scram_server_final(struct scram_server *st, const uint8_t *data, size_t len, char *out,
		       size_t cap, size_t *outlen, const char **why);

/* SCRAM, the router as client of a coordinator. */
struct scram_client {
	char password[AUTH_MAX_SECRET]; /* "" when logging in with keys */
	bool have_keys;
	uint8_t client_key[SCRAM_KEY_LEN], server_key[SCRAM_KEY_LEN];
	uint8_t salt[SCRAM_MAX_SALT]; /* the keys' salt and iterations */
	size_t saltlen;
	uint32_t iterations;
	/*
	 * Set after scram_client_init_*() and before scram_client_first() to fix
	 * the nonce (tests); left "" it is random. Init again for each exchange.
	 */
	char nonce[64];
	char client_first_bare[128];
	uint8_t server_signature[SCRAM_KEY_LEN];
	bool final_sent; /* scram_client_final() succeeded: server_signature is set */
};

/* With a plaintext password (SASLprep is not applied: ASCII passwords). */
void scram_client_init_password(struct scram_client *c, const char *password);
/* With keys recovered by scram_server_final() from a verifier with this salt/iterations. */
void scram_client_init_keys(struct scram_client *c, const uint8_t client_key[SCRAM_KEY_LEN],
			    const uint8_t server_key[SCRAM_KEY_LEN], const uint8_t *salt,
			    size_t saltlen, uint32_t iterations);
/*
 * The client-first-message ("n,,n=,r=<nonce>"); returns its length (0 if cap
 * is short, no random bytes came, or a preset nonce is not printable).
 */
size_t scram_client_first(struct scram_client *c, char *out, size_t cap);
/*
 * The server-first-message -> the client-final-message in out. -1 with *why
 * when it is malformed, or when we hold keys and the server's salt or
 * iterations differ from theirs (a different verifier on this server).
 */
int scram_client_final(struct scram_client *c, const uint8_t *data, size_t len, char *out,
		       size_t cap, size_t *outlen, const char **why);
/* The server-final-message: 0 if its signature is right, else -1 with *why. */
int scram_client_verify(struct scram_client *c, const uint8_t *data, size_t len,
			const char **why);

#endif /* TR_AUTH_H */
