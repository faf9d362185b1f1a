/*
 * tls.c - OpenSSL glue: contexts from settings, connections over memory BIOs.
 *
 * Renegotiation is disabled (a TLS 1.2 peer cannot make us do handshakes
 * mid-stream) and SSL_MODE_RELEASE_BUFFERS keeps idle connections small.
 * Writes go into a memory BIO that grows as needed, so tls_write() always
 * takes everything; the caller moves the ciphertext to the socket at once
 * and the socket's write queue is what back-pressure watches.
 */
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls {
	SSL *ssl;  /* owned; owns both BIOs */
	BIO *rbio; /* borrowed from ssl: network -> OpenSSL */
	BIO *wbio; /* borrowed from ssl: OpenSSL -> network */
	char err[256];
};

/* ALPN for PostgreSQL 17+ direct TLS: the wire format is length-prefixed. */
static const unsigned char alpn_pg[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

bool tls_client_mode_parse(const char *s, enum tls_client_mode *out)
{
	if (strcmp(s, "disable") == 0)
		*out = TLS_CLIENT_DISABLE;
	else if (strcmp(s, "allow") == 0 || strcmp(s, "prefer") == 0)
		*out = TLS_CLIENT_ALLOW;
	else if (strcmp(s, "require") == 0)
		*out = TLS_CLIENT_REQUIRE;
	else if (strcmp(s, "verify-ca") == 0)
		*out = TLS_CLIENT_VERIFY_CA;
	else
		return false;
	return true;
}

static const char *const server_mode_names[] = {"disable", "prefer", "require", "verify-ca",
						"verify-full"};

bool tls_server_mode_parse(const char *s, enum tls_server_mode *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(server_mode_names); i++) {
		if (strcmp(s, server_mode_names[i]) == 0) {
			*out = (enum tls_server_mode)i;
			return true;
		}
	}
	return false;
}

const char *tls_server_mode_name(enum tls_server_mode m)
{
	return server_mode_names[m];
}

static void openssl_reason(char *err, size_t errlen, const char *what);

/* "cannot load certificate /path: reason", naming the file an operator must fix. */
static void file_reason(char *err, size_t errlen, const char *what, const char *path)
{
	char w[512];

	snprintf(w, sizeof(w), "%s %s", what, path);
	openssl_reason(err, errlen, w);
}

static void openssl_reason(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[200];

	if (e) {
		ERR_error_string_n(e, buf, sizeof(buf));
		snprintf(err, errlen, "%s: %s", what, buf);
	} else {
		snprintf(err, errlen, "%s", what);
	}
	ERR_clear_error();
}

static int proto_version(const char *s)
{
	if (strcasecmp(s, "tlsv1.0") == 0 || strcasecmp(s, "tlsv1") == 0)
		return TLS1_VERSION;
	if (strcasecmp(s, "tlsv1.1") == 0)
		return TLS1_1_VERSION;
	if (strcasecmp(s, "tlsv1.2") == 0)
		return TLS1_2_VERSION;
	if (strcasecmp(s, "tlsv1.3") == 0)
		return TLS1_3_VERSION;
	return 0;
}

/* "secure" = TLS 1.2 and 1.3; "all"; or a list naming the range's ends (hi 0: newest). */
static bool protocol_range(const char *spec, int *plo, int *phi, char *err, size_t errlen)
{
	int lo = 0, hi = 0;
	char buf[128], *save = NULL;

	if (spec == NULL || strcasecmp(spec, "secure") == 0) {
		lo = TLS1_2_VERSION;
		hi = 0;
	} else if (strcasecmp(spec, "all") == 0) {
		lo = TLS1_VERSION;
		hi = 0;
	} else {
		snprintf(buf, sizeof(buf), "%s", spec);
		for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			int v = proto_version(tok);

			if (v == 0) {
				snprintf(err, errlen,
					 "unknown TLS protocol \"%s\" (use secure, all, or tlsv1.2, "
					 "tlsv1.3)",
					 tok);
				return false;
			}
			if (lo == 0 || v < lo)
				lo = v;
			if (v > hi)
				hi = v;
		}
	}
	*plo = lo;
	*phi = hi;
	return true;
}

static const char *libpq_version_name(int v)
{
	switch (v) {
	case TLS1_VERSION:
		return "TLSv1";
	case TLS1_1_VERSION:
		return "TLSv1.1";
	case TLS1_2_VERSION:
		return "TLSv1.2";
	case TLS1_3_VERSION:
		return "TLSv1.3";
	default:
		return NULL;
	}
}

bool tls_protocols_libpq(const char *spec, const char **min, const char **max)
{
	int lo, hi;
	char err[8];

	if (!protocol_range(spec, &lo, &hi, err, sizeof(err)))
		return false;
	*min = libpq_version_name(lo);
	*max = libpq_version_name(hi);
	return true;
}

static bool set_protocols(SSL_CTX *ctx, const char *spec, char *err, size_t errlen)
{
	int lo, hi;

	if (!protocol_range(spec, &lo, &hi, err, errlen))
		return false;
	if (!SSL_CTX_set_min_proto_version(ctx, lo) || !SSL_CTX_set_max_proto_version(ctx, hi)) {
		openssl_reason(err, errlen, "cannot set TLS protocol versions");
		return false;
	}
	return true;
}

static SSL_CTX *ctx_common(const SSL_METHOD *method, const struct tls_settings *ts, char *err,
			   size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(method);

	if (ctx == NULL) {
		openssl_reason(err, errlen, "cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (!set_protocols(ctx, ts->protocols, err, errlen))
		goto fail;
	if (ts->ciphers && *ts->ciphers && !SSL_CTX_set_cipher_list(ctx, ts->ciphers)) {
		openssl_reason(err, errlen, "invalid TLS cipher list");
		goto fail;
	}
	if (ts->cert_file && !SSL_CTX_use_certificate_chain_file(ctx, ts->cert_file)) {
		file_reason(err, errlen, "cannot load certificate", ts->cert_file);
		goto fail;
	}
	if (ts->key_file && !SSL_CTX_use_PrivateKey_file(ctx, ts->key_file, SSL_FILETYPE_PEM)) {
		file_reason(err, errlen, "cannot load private key", ts->key_file);
		goto fail;
	}
	if (ts->cert_file && ts->key_file && !SSL_CTX_check_private_key(ctx)) {
		file_reason(err, errlen, "private key does not match the certificate",
			    ts->cert_file);
		goto fail;
	}
	if (ts->ca_file && *ts->ca_file && !SSL_CTX_load_verify_locations(ctx, ts->ca_file, NULL)) {
		file_reason(err, errlen, "cannot load CA file", ts->ca_file);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			  const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned char *sel;

	if (SSL_select_next_proto(&sel, outlen, alpn_pg, sizeof(alpn_pg), in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_accept_ctx_new(const struct tls_settings *ts, bool require_client_cert, char *err,
			    size_t errlen)
{
	SSL_CTX *ctx;

	if (ts->cert_file == NULL || ts->key_file == NULL) {
		snprintf(err, errlen, "a certificate and a key file are needed");
		return NULL;
	}
	ctx = ctx_common(TLS_server_method(), ts, err, errlen);
	if (ctx == NULL)
		return NULL;
	if (ts->ca_file && *ts->ca_file) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ts->ca_file);

		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx,
				   SSL_VERIFY_PEER |
					   (require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
				   NULL);
	} else if (require_client_cert) {
		snprintf(err, errlen, "verify-ca needs client_tls_ca_file");
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
	return ctx;
}

SSL_CTX *tls_connect_ctx_new(const struct tls_settings *ts, enum tls_server_mode mode, char *err,
			     size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_client_method(), ts, err, errlen);

	if (ctx == NULL)
		return NULL;
	if (mode >= TLS_SERVER_VERIFY_CA) {
		if (ts->ca_file == NULL || *ts->ca_file == '\0') {
			snprintf(err, errlen, "%s needs server_tls_ca_file",
				 tls_server_mode_name(mode));
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

SSL_CTX *tls_ctx_ref(SSL_CTX *ctx)
{
	SSL_CTX_up_ref(ctx);
	return ctx;
}

void tls_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

struct tls *tls_new(SSL_CTX *ctx, bool accept, const char *host, bool verify_host)
{
	struct tls *t = calloc(1, sizeof(*t));
	struct in6_addr a6;
	struct in_addr a4;
	bool is_ip;

	if (t == NULL)
		return NULL;
	t->ssl = SSL_new(ctx);
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL)
		goto fail;
	/* An empty input BIO means "wait for more", not end of file. */
	BIO_set_mem_eof_return(t->rbio, -1);
	SSL_set_bio(t->ssl, t->rbio, t->wbio);
	if (accept) {
		SSL_set_accept_state(t->ssl);
		return t;
	}
	SSL_set_connect_state(t->ssl);
	is_ip = host && (inet_pton(AF_INET, host, &a4) == 1 || inet_pton(AF_INET6, host, &a6) == 1);
	if (host && !is_ip)
		SSL_set_tlsext_host_name(t->ssl, host);
	if (host && verify_host) {
		X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);

		if (is_ip ? !X509_VERIFY_PARAM_set1_ip_asc(vp, host) : !SSL_set1_host(t->ssl, host))
			goto fail_ssl;
	}
	SSL_set_alpn_protos(t->ssl, alpn_pg, sizeof(alpn_pg));
	return t;
fail:
	BIO_free(t->rbio);
	BIO_free(t->wbio);
	SSL_free(t->ssl);
	free(t);
	return NULL;
fail_ssl:
	SSL_free(t->ssl);
	free(t);
	return NULL;
}

void tls_free(struct tls *t)
{
	if (t == NULL)
		return;
	SSL_free(t->ssl);
	free(t);
}

bool tls_feed(struct tls *t, const void *p, size_t n)
{
	return BIO_write(t->rbio, p, (int)n) == (int)n;
}

static int classify(struct tls *t, int rc, const char *what)
{
	int e = SSL_get_error(t->ssl, rc);

	switch (e) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		return TLS_AGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return TLS_EOF;
	default:
		if (SSL_get_verify_result(t->ssl) != X509_V_OK)
			snprintf(t->err, sizeof(t->err), "%s: certificate verify failed: %s", what,
				 X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
		else
			openssl_reason(t->err, sizeof(t->err), what);
		ERR_clear_error();
		return TLS_ERROR;
	}
}

int tls_handshake(struct tls *t)
{
	int rc = SSL_do_handshake(t->ssl);

	return rc == 1 ? 1 : classify(t, rc, "TLS handshake failed");
}

int tls_read(struct tls *t, void *buf, size_t cap)
{
	int rc = SSL_read(t->ssl, buf, (int)cap);

	return rc > 0 ? rc : classify(t, rc, "TLS read failed");
}

bool tls_write(struct tls *t, const void *p, size_t n)
{
	int rc;

	if (n == 0)
		return true;
	rc = SSL_write(t->ssl, p, (int)n);
	if (rc == (int)n)
		return true;
	classify(t, rc, "TLS write failed");
	return false;
}

size_t tls_take_out(struct tls *t, void *buf, size_t cap)
{
	int n = BIO_read(t->wbio, buf, (int)cap);

	return n > 0 ? (size_t)n : 0;
}

bool tls_alpn_is_postgresql(struct tls *t)
{
	const unsigned char *p;
	unsigned int n;

	SSL_get0_alpn_selected(t->ssl, &p, &n);
	return n == sizeof(alpn_pg) - 1 && memcmp(p, alpn_pg + 1, n) == 0;
}

const char *tls_error(struct tls *t)
{
	return t->err[0] ? t->err : "TLS error";
}
