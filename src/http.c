/*
 * http.c - one-request-per-connection HTTP/1.1 server on an event loop.
 *
 * http-parser frames the request; we only keep the URL (bounded) and the
 * method, and ignore headers and any body. A connection lives at most
 * HTTP_DEADLINE_MS from accept, whatever the client does: a slowloris
 * client that sends a byte a second gets 408 and the close at the
 * deadline, one that never reads its answer is closed at the same point.
 * Reads are cut at HTTP_MAX_REQUEST bytes in all (431), a URL longer than
 * HTTP_MAX_URL gets 414, anything http-parser rejects gets 400. Nothing
 * here blocks, so the event loop (which also routes sessions) never waits
 * for an HTTP client.
 *
 * This module knows no paths: the owner's handler (given at start, called
 * back, never named) decides what each request gets.
 *
 * Memory: a connection is one allocation with its handles embedded, freed
 * in the last close callback; the answer is one buffer, freed when the
 * connection is.
 */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>
#include <uv.h>

#include "buf.h"
#include "log.h"

#define HTTP_MAX_URL  2048u
#define HTTP_READ_BUF 4096u

struct hconn {
	struct http_server *srv; /* borrowed: owner */
	struct hconn *prev, *next;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t wreq;
	uv_shutdown_t shut;
	int open_handles;
	bool closing;
	bool answered;
	bool complete; /* on_message_complete came */
	bool url_long; /* the URL passed HTTP_MAX_URL */
	http_parser parser;
	size_t received;
	char url[HTTP_MAX_URL + 1];
	size_t urllen;
	char *out; /* owned: the answer being written */
	char rbuf[HTTP_READ_BUF];
};

struct http_server {
	uv_loop_t *loop; /* borrowed */
	uv_tcp_t listener;
	bool listener_open;
	bool stopping;
	http_handler_fn fn;
	void *arg;
	http_parser_settings settings;
	struct hconn *conns; /* intrusive list */
	size_t nconns;
	struct log_limit busy_log;
};

static void maybe_free_server(struct http_server *srv)
{
	if (srv->stopping && !srv->listener_open && srv->nconns == 0)
		free(srv);
}

static void conn_close_cb(uv_handle_t *h)
{
	struct hconn *c = h->data;
	struct http_server *srv = c->srv;

	if (--c->open_handles > 0)
		return;
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	srv->nconns--;
	free(c->out);
	free(c);
	maybe_free_server(srv);
}

static void conn_close(struct hconn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->timer, conn_close_cb);
	uv_close((uv_handle_t *)&c->tcp, conn_close_cb);
}

/* Room for n more bytes and a NUL; false (sticky) when out of memory. */
static bool reserve(struct http_response *res, size_t n)
{
	char *b;

	if (res->failed)
		return false;
	/* One more for the NUL. */
	b = buf_grow(res->body, &res->cap, res->len + n + 1, 4096, SIZE_MAX);
	if (b == NULL) {
		res->failed = true;
		return false;
	}
	res->body = b;
	return true;
}

void http_append(struct http_response *res, const void *p, size_t n)
{
	if (n == 0 || !reserve(res, n))
		return;
	memcpy(res->body + res->len, p, n);
	res->len += n;
	res->body[res->len] = '\0';
}

void http_printf(struct http_response *res, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		res->failed = true;
		return;
	}
	if (!reserve(res, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(res->body + res->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	res->len += (size_t)n;
}

static const char *status_text(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 414:
		return "URI Too Long";
	case 431:
		return "Request Header Fields Too Large";
	case 503:
		return "Service Unavailable";
	default:
		return "Internal Server Error";
	}
}

/* Status line, headers and body as one buffer; NULL when out of memory. */
static char *render(const struct http_response *res, size_t *outlen)
{
	char head[512];
	int hn;
	char *out;

	hn = snprintf(head, sizeof(head),
	              "HTTP/1.1 %d %s\r\n"
	              "Content-Type: %s\r\n"
	              "Content-Length: %zu\r\n"
	              "Cache-Control: no-store\r\n"
	              "X-Content-Type-Options: nosniff\r\n"
	              "%s%s%s"
	              "Connection: close\r\n\r\n",
	              res->status, status_text(res->status),
	              res->content_type ? res->content_type : "text/plain; charset=utf-8", res->len,
	              res->allow ? "Allow: " : "", res->allow ? res->allow : "",
	              res->allow ? "\r\n" : "");
	if (hn < 0 || (size_t)hn >= sizeof(head))
		return NULL;
	out = malloc((size_t)hn + res->len);
	if (out == NULL)
		return NULL;
	memcpy(out, head, (size_t)hn);
	if (res->len)
		memcpy(out + hn, res->body, res->len);
	*outlen = (size_t)hn + res->len;
	return out;
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	conn_close(req->data);
}

static void write_cb(uv_write_t *req, int status)
{
	struct hconn *c = req->data;

	if (status < 0 || c->closing) {
		conn_close(c);
		return;
	}
	c->shut.data = c;
	if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
		conn_close(c);
}

/* Sends res and closes after it; the deadline still bounds a client that never reads. */
static void answer(struct hconn *c, struct http_response *res)
{
	uv_buf_t buf;
	size_t n = 0;

	c->answered = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	if (res->failed) {
		res->status = 500;
		res->content_type = NULL;
		res->allow = NULL;
		res->len = 0;
	}
	c->out = render(res, &n);
	free(res->body);
	res->body = NULL;
	if (c->out == NULL) {
		conn_close(c);
		return;
	}
	buf = uv_buf_init(c->out, (unsigned)n);
	c->wreq.data = c;
	if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) < 0)
		conn_close(c);
}

static void answer_error(struct hconn *c, int status, const char *text)
{
	struct http_response res = {.status = status};

	http_printf(&res, "%s\n", text);
	answer(c, &res);
}

static int on_url(http_parser *p, const char *at, size_t len)
{
	struct hconn *c = p->data;

	if (len > HTTP_MAX_URL - c->urllen) {
		c->url_long = true;
		return 1; /* stops the parser */
	}
	memcpy(c->url + c->urllen, at, len);
	c->urllen += len;
	c->url[c->urllen] = '\0';
	return 0;
}

static int on_message_complete(http_parser *p)
{
	struct hconn *c = p->data;

	c->complete = true;
	/* One request per connection: whatever follows is not ours to read. */
	http_parser_pause(p, 1);
	return 0;
}

static void dispatch(struct hconn *c)
{
	struct http_response res = {.status = 200};
	struct http_parser_url u;
	char path[HTTP_MAX_URL + 1];
	struct http_request req;

	http_parser_url_init(&u);
	if (http_parser_parse_url(c->url, c->urllen, 0, &u) != 0) {
		answer_error(c, 400, "bad request: the URL does not parse");
		return;
	}
	if (u.field_set & (1u << UF_PATH)) {
		memcpy(path, c->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
		path[u.field_data[UF_PATH].len] = '\0';
	} else {
		snprintf(path, sizeof(path), "/");
	}
	req.method = http_method_str((enum http_method)c->parser.method);
	req.path = path;
	c->srv->fn(c->srv->arg, &req, &res);
	answer(c, &res);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct hconn *c = h->data;

	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct hconn *c = stream->data;
	size_t take, done;
	enum http_errno e;

	if (nread == 0 || c->answered || c->closing)
		return;
	if (nread < 0) {
		conn_close(c);
		return;
	}
	/* Only what fits in the request budget is parsed; the rest is never looked at. */
	take = (size_t)nread < HTTP_MAX_REQUEST - c->received ? (size_t)nread
	                                                      : HTTP_MAX_REQUEST - c->received;
	c->received += take;
	done = http_parser_execute(&c->parser, &c->srv->settings, buf->base, take);
	e = HTTP_PARSER_ERRNO(&c->parser);
	if (c->complete) {
		dispatch(c);
		return;
	}
	if (c->url_long) {
		answer_error(c, 414, "URI too long");
		return;
	}
	if (e != HPE_OK || done != take || c->parser.upgrade) {
		answer_error(c, 400, "bad request: malformed HTTP");
		return;
	}
	if (c->received >= HTTP_MAX_REQUEST)
		answer_error(c, 431, "request too large");
}

static void timer_cb(uv_timer_t *t)
{
	struct hconn *c = t->data;
	static const char timeout_answer[] = "HTTP/1.1 408 Request Timeout\r\n"
	                                     "Content-Type: text/plain; charset=utf-8\r\n"
	                                     "Content-Length: 16\r\n"
	                                     "Connection: close\r\n\r\n"
	                                     "request timeout\n";
	uv_buf_t buf = uv_buf_init((char *)timeout_answer, sizeof(timeout_answer) - 1);

	/* Best effort, without waiting: a client too slow to send is not waited on to read. */
	if (!c->answered)
		(void)uv_try_write((uv_stream_t *)&c->tcp, &buf, 1);
	conn_close(c);
}

static void connection_cb(uv_stream_t *listener, int status)
{
	struct http_server *srv = listener->data;
	struct hconn *c;

	if (status < 0 || srv->stopping)
		return;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->srv = srv;
	uv_tcp_init(srv->loop, &c->tcp);
	uv_timer_init(srv->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->open_handles = 2;
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->nconns++;
	if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
		conn_close(c);
		return;
	}
	/* Over the limit: accepted only to be closed, so the backlog cannot hold sockets. */
	if (srv->nconns > HTTP_MAX_CONNS) {
		size_t n = log_limit_hit(&srv->busy_log, uv_now(srv->loop), 1000);

		if (n > 0)
			log_warn("metrics: %u HTTP connections open, closed %zu more at accept",
			         HTTP_MAX_CONNS, n);
		conn_close(c);
		return;
	}
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	uv_timer_start(&c->timer, timer_cb, HTTP_DEADLINE_MS, 0);
	if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0)
		conn_close(c);
}

static void listener_close_cb(uv_handle_t *h)
{
	struct http_server *srv = h->data;

	srv->listener_open = false;
	maybe_free_server(srv);
}

struct http_server *http_start(uv_loop_t *loop, const char *host, uint16_t port, http_handler_fn fn,
                               void *arg, char *err, size_t errlen)
{
	struct addrinfo hints = {
	        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
	struct addrinfo *res = NULL;
	struct http_server *srv;
	char portstr[8];
	int rc;

	srv = calloc(1, sizeof(*srv));
	if (srv == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	srv->loop = loop;
	srv->fn = fn;
	srv->arg = arg;
	srv->settings.on_url = on_url;
	srv->settings.on_message_complete = on_message_complete;
	snprintf(portstr, sizeof(portstr), "%u", port);
	rc = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, portstr, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "%s", gai_strerror(rc));
		free(srv);
		return NULL;
	}
	rc = uv_tcp_init(loop, &srv->listener);
	if (rc < 0) {
		snprintf(err, errlen, "%s", uv_strerror(rc));
		freeaddrinfo(res);
		free(srv);
		return NULL;
	}
	srv->listener.data = srv;
	srv->listener_open = true;
	rc = uv_tcp_bind(&srv->listener, res->ai_addr, 0);
	if (rc == 0)
		rc = uv_listen((uv_stream_t *)&srv->listener, 64, connection_cb);
	freeaddrinfo(res);
	if (rc < 0) {
		snprintf(err, errlen, "%s", uv_strerror(rc));
		srv->stopping = true;
		uv_close((uv_handle_t *)&srv->listener, listener_close_cb);
		return NULL;
	}
	return srv;
}

void http_stop(struct http_server *srv)
{
	if (srv == NULL || srv->stopping)
		return;
	srv->stopping = true;
	for (struct hconn *c = srv->conns; c; c = c->next)
		conn_close(c);
	uv_close((uv_handle_t *)&srv->listener, listener_close_cb);
}
