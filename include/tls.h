/*
 * tls.h - TLS for one leg of a session, OpenSSL over memory BIOs.
 *
 * The event loop owns the socket; OpenSSL never touches it. Ciphertext read
 * from the socket is fed in with tls_feed(); plaintext comes out of
 * tls_read(); plaintext given to tls_write() turns into ciphertext that the
 * caller drains with tls_take_out() and writes to the socket. Handshakes
 * advance with tls_handshake() whenever new ciphertext arrived.
 *
 * Contexts (SSL_CTX) are built once per configuration snapshot, off the
 * loop; each connection holds its own reference through its SSL object, so
 * a reload never pulls a context from under a live session.
 */
#ifndef TR_TLS_H
#define TR_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"

typedef struct ssl_ctx_st SSL_CTX;
struct tls;

enum tls_client_mode {
	TLS_CLIENT_DISABLE,
	TLS_CLIENT_ALLOW,
	TLS_CLIENT_REQUIRE,
	TLS_CLIENT_VERIFY_CA,
};
enum tls_server_mode {
	TLS_SERVER_DISABLE,
	TLS_SERVER_PREFER,
	TLS_SERVER_REQUIRE,
	TLS_SERVER_VERIFY_CA,
	TLS_SERVER_VERIFY_FULL,
};

bool tls_client_mode_parse(const char *s, enum tls_client_mode *out);
bool tls_server_mode_parse(const char *s, enum tls_server_mode *out);
const char *tls_server_mode_name(enum tls_server_mode m);

struct tls_settings {
	const char *cert_file; /* borrowed; may be NULL */
	const char *key_file;
	const char *ca_file;
	const char *protocols; /* "secure", "all" or a list of tlsv1.0 .. tlsv1.3 */
	const char *ciphers;   /* OpenSSL cipher list for TLS <= 1.2 */
};

/*
 * Context for accepting client connections (we are the TLS server). A CA
 * file makes us ask for client certificates and verify the ones given;
 * require_client_cert refuses clients without one. NULL + err on failure.
 */
SSL_CTX *tls_accept_ctx_new(const struct tls_settings *ts, bool require_client_cert, char *err,
			    size_t errlen) MUSTCHECK;
/* Context for connecting to coordinators (we are the TLS client). */
SSL_CTX *tls_connect_ctx_new(const struct tls_settings *ts, enum tls_server_mode mode, char *err,
			     size_t errlen) MUSTCHECK;
/*
 * The protocol range of a *_tls_protocols setting as libpq's
 * ssl_min_protocol_version / ssl_max_protocol_version values (*max NULL:
 * no upper bound). False if spec is invalid.
 */
bool tls_protocols_libpq(const char *spec, const char **min, const char **max);

/* Shares ctx (it lives until the last tls_ctx_free). */
SSL_CTX *tls_ctx_ref(SSL_CTX *ctx);
void tls_ctx_free(SSL_CTX *ctx);

/*
 * A connection. For the connecting side, host is checked against the
 * certificate when verify_host (verify-full) and sent as SNI when a name.
 */
struct tls *tls_new(SSL_CTX *ctx, bool accept, const char *host, bool verify_host) MUSTCHECK;
void tls_free(struct tls *t);

/* Gives ciphertext from the network. Returns false when out of memory. */
bool tls_feed(struct tls *t, const void *p, size_t n) MUSTCHECK;

#define TLS_AGAIN (-1) /* needs more ciphertext */
#define TLS_EOF	  (-2) /* the peer sent close_notify */
#define TLS_ERROR (-3) /* see tls_error() */

/* 1: handshake complete, TLS_AGAIN, or TLS_ERROR. */
int tls_handshake(struct tls *t);
/* Plaintext bytes read (> 0), TLS_AGAIN, TLS_EOF or TLS_ERROR. */
int tls_read(struct tls *t, void *buf, size_t cap);
/* Encrypts all of p; false on error. */
bool tls_write(struct tls *t, const void *p, size_t n) MUSTCHECK;
/* Ciphertext waiting to be sent; copies up to cap bytes of it into buf. */
size_t tls_take_out(struct tls *t, void *buf, size_t cap);
/* The negotiated ALPN protocol is "postgresql". */
bool tls_alpn_is_postgresql(struct tls *t);
/* The last error, for logs and client messages (static or in t). */
const char *tls_error(struct tls *t);

#endif /* TR_TLS_H */
