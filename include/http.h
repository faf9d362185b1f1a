/*
 * http.h - a small HTTP/1.1 server on one event loop, for /metrics and the
 * status page. Requests are framed by http-parser (Debian's
 * libhttp-parser), never by hand.
 *
 * Every connection is bounded: HTTP_MAX_REQUEST bytes in all, one request,
 * HTTP_DEADLINE_MS from accept to the last byte of the answer, and at most
 * HTTP_MAX_CONNS at once (more are closed at accept). A slow or broken client
 * is cut off at the deadline and holds nothing else up: the loop never
 * waits for it. Each answer says Connection: close.
 *
 * The handler is called once per well-formed request, on the loop's
 * thread; it fills the response and returns (it must not block). Malformed
 * (400), oversized (431) and timed-out (408) requests never reach it.
 */
#ifndef TR_HTTP_H
#define TR_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common.h"

#define HTTP_MAX_REQUEST (8u * 1024u)
#define HTTP_DEADLINE_MS 5000u
#define HTTP_MAX_CONNS   64u

struct http_server;

struct http_request {
	const char *method; /* "GET", "POST", ... */
	const char *path;   /* the URL's path, without query or fragment */
};

/* What the handler answers. body grows as the handler appends to it. */
struct http_response {
	int status;               /* 200 unless set */
	const char *content_type; /* borrowed: a string literal */
	const char *allow;        /* borrowed; for 405: the Allow header */
	char *body;               /* owned by the server */
	size_t len, cap;
	bool failed; /* out of memory while appending: answered 500 */
};

typedef void (*http_handler_fn)(void *arg, const struct http_request *req,
                                struct http_response *res);

/*
 * Listens on host:port on loop. Returns NULL with the reason in err. fn
 * and arg are kept until http_stop.
 */
struct http_server *http_start(uv_loop_t *loop, const char *host, uint16_t port, http_handler_fn fn,
                               void *arg, char *err, size_t errlen) MUSTCHECK;

/* Closes the listener and every connection; frees itself once all handles are closed. */
void http_stop(struct http_server *srv);

/* Appends to the response body (sticky failure: sets res->failed). */
void http_append(struct http_response *res, const void *p, size_t n);
void http_printf(struct http_response *res, const char *fmt, ...) PRINTF_LIKE(2, 3);

#endif /* TR_HTTP_H */
