/*
 * peer.c - hand-over of listening sockets, and cancel requests, between
 * router processes on one machine (a rolling restart).
 *
 * Why hand the sockets over rather than only share the port with
 * SO_REUSEPORT: each SO_REUSEPORT socket has an accept queue of its own,
 * and closing one resets the connections still queued in it, however
 * quickly the old process accepts before it closes. When the new process
 * holds the very sockets the old one listens on (SCM_RIGHTS), the queue
 * outlives the old process's close(): during a rolling restart nothing is
 * reset. A worker of the new process that gets no socket handed over opens
 * its own SO_REUSEPORT socket, which joins the same group.
 *
 * Messages are datagrams whose first byte says what they are:
 *   'L'           a new process asks for listening sockets (from its socket)
 *   'l' + fds     the answer, the descriptors in SCM_RIGHTS; none while draining
 *   'C' + packet  a CancelRequest (the whole packet) that may be one of ours
 * A cancel is never passed on again, so two processes cannot bounce one.
 * Datagrams from another user are ignored: the kernel attaches the
 * sender's credentials (SO_PASSCRED), and the socket file is mode 0600.
 *
 * Not done here: the directory is read on the loop (opendir), which is
 * cheap on /run's tmpfs and happens only at start-up and per unknown cancel.
 */
#include "peer.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "cancel.h"
#include "log.h"
#include "proto.h"

#define PEER_PREFIX  "tenant-router-"
#define PEER_SUFFIX  ".sock"
#define PEER_MAX_FDS 253 /* SCM_MAX_FD: the most one message may carry */
#define PEER_MSG_MAX (1 + 12 + PROTO_MAX_CANCEL_KEY)
#define PEER_BATCH   64 /* datagrams read per wakeup, so a flood cannot starve the loop */

struct peer_msg {
	uint8_t buf[PEER_MSG_MAX];
	size_t len;
	struct sockaddr_un from;
	socklen_t fromlen;
	int fds[PEER_MAX_FDS]; /* owned until taken */
	size_t nfds;
	bool same_user;
};

static struct {
	uv_loop_t *loop;            /* borrowed */
	struct cancel_map *cancels; /* borrowed */
	peer_listeners_fn listeners;
	uv_poll_t poll;
	atomic_bool started; /* read by every loop in peer_forward_cancel */
	int fd;
	char dir[72];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
} P = {.fd = -1};

static bool make_addr(struct sockaddr_un *sun, const char *path)
{
	size_t n = strlen(path);

	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	if (n >= sizeof(sun->sun_path))
		return false;
	memcpy(sun->sun_path, path, n + 1);
	return true;
}

static void close_fds(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

/* Reads one datagram; 0, or a negative errno (-EAGAIN when none is queued). */
static int recv_one(struct peer_msg *m)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * PEER_MAX_FDS)];
	} ctl;
	struct iovec iov = {.iov_base = m->buf, .iov_len = sizeof(m->buf)};
	struct msghdr h = {.msg_name = &m->from,
	                   .msg_namelen = sizeof(m->from),
	                   .msg_iov = &iov,
	                   .msg_iovlen = 1,
	                   .msg_control = ctl.buf,
	                   .msg_controllen = sizeof(ctl.buf)};
	ssize_t n = recvmsg(P.fd, &h, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	if (n == -1)
		return -errno;
	m->len = (h.msg_flags & MSG_TRUNC) ? 0 : (size_t)n;
	m->fromlen = h.msg_namelen;
	m->nfds = 0;
	m->same_user = false;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
		if (c->cmsg_level != SOL_SOCKET)
			continue;
		if (c->cmsg_type == SCM_CREDENTIALS &&
		    c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
			struct ucred u;

			memcpy(&u, CMSG_DATA(c), sizeof(u));
			m->same_user = u.uid == geteuid();
		} else if (c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0)) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			if (k > PEER_MAX_FDS - m->nfds)
				k = PEER_MAX_FDS - m->nfds;
			memcpy(m->fds + m->nfds, CMSG_DATA(c), k * sizeof(int));
			m->nfds += k;
		}
	}
	return 0;
}

/* Sends our listening sockets to the process that asked. */
static void answer_listeners(const struct peer_msg *m)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * PEER_MAX_FDS)];
	} ctl;
	int fds[PEER_MAX_FDS];
	char tag = 'l';
	struct iovec iov = {.iov_base = &tag, .iov_len = 1};
	struct msghdr h = {.msg_name = (void *)&m->from,
	                   .msg_namelen = m->fromlen,
	                   .msg_iov = &iov,
	                   .msg_iovlen = 1};
	size_t n = P.listeners(fds, PEER_MAX_FDS);

	if (n > 0) {
		struct cmsghdr *c;

		memset(&ctl, 0, sizeof(ctl));
		h.msg_control = ctl.buf;
		h.msg_controllen = CMSG_SPACE(sizeof(int) * n);
		/* The buffer is ours and big enough: the header is ctl.h itself. */
		c = &ctl.h;
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * n);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	}
	if (sendmsg(P.fd, &h, MSG_DONTWAIT | MSG_NOSIGNAL) == -1)
		log_warn("peer: could not answer a new process: %s", strerror(errno));
	else
		log_info("peer: handed %zu listening sockets to a new process", n);
}

/* A CancelRequest another process did not know: forward it if the key is ours. */
static void take_cancel(const uint8_t *p, size_t n)
{
	union cancel_addr addr;
	uint8_t out[12 + PROTO_MAX_CANCEL_KEY];
	size_t outlen;

	if (n < 16 || n > 12 + PROTO_MAX_CANCEL_KEY || proto_get_u32(p) != n ||
	    proto_get_u32(p + 4) != PROTO_CODE_CANCEL)
		return;
	if (cancel_lookup_packet(P.cancels, proto_get_u32(p + 8), p + 12, n - 12, p, n, &addr, out,
	                         &outlen)) {
		log_info("peer: forwarding a cancel request another process received pid=%u",
		         proto_get_u32(p + 8));
		cancel_forward(P.loop, &addr, out, outlen);
	}
}

/* Acts on one datagram; closes any descriptors it does not take. */
static void dispatch(struct peer_msg *m)
{
	if (!m->same_user || m->len == 0) {
		if (!m->same_user)
			log_debug("peer: ignored a datagram from another user");
	} else if (m->buf[0] == 'L') {
		answer_listeners(m);
	} else if (m->buf[0] == 'C') {
		take_cancel(m->buf + 1, m->len - 1);
	}
	/* 'l' here is an answer that came after peer_take_listeners gave up. */
	close_fds(m->fds, m->nfds);
	m->nfds = 0;
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	struct peer_msg m = {.len = 0};

	if (status < 0)
		return;
	for (int i = 0; i < PEER_BATCH && recv_one(&m) == 0; i++)
		dispatch(&m);
}

/*
 * Sends msg to every other process's socket in the directory, from fd;
 * returns how many took it. A file nobody is bound to (ECONNREFUSED) was
 * left by a process that died without cleaning up: removed.
 */
static size_t send_to_peers(int fd, const void *msg, size_t len)
{
	const size_t plen = strlen(PEER_PREFIX), slen = strlen(PEER_SUFFIX);
	DIR *d = opendir(P.dir);
	struct dirent *e;
	size_t sent = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		size_t nl = strlen(e->d_name);
		char path[sizeof(P.path)];
		struct sockaddr_un sun;
		int w;

		if (nl <= plen + slen || strncmp(e->d_name, PEER_PREFIX, plen) != 0 ||
		    strcmp(e->d_name + nl - slen, PEER_SUFFIX) != 0)
			continue;
		w = snprintf(path, sizeof(path), "%s/%s", P.dir, e->d_name);
		if (w < 0 || (size_t)w >= sizeof(path) || strcmp(path, P.path) == 0 ||
		    !make_addr(&sun, path))
			continue;
		if (sendto(fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&sun,
		           sizeof(sun)) == -1) {
			if (errno == ECONNREFUSED && unlink(path) == 0)
				log_info("peer: removed %s, left by a process that is gone", path);
			continue;
		}
		sent++;
	}
	closedir(d);
	return sent;
}

int peer_start(uv_loop_t *loop, const char *dir, struct cancel_map *cancels,
               peer_listeners_fn listeners)
{
	struct sockaddr_un sun;
	bool bound = false;
	int one = 1, w, rc;

	w = snprintf(P.path, sizeof(P.path), "%s/" PEER_PREFIX "%ld" PEER_SUFFIX, dir,
	             (long)getpid());
	if (w < 0 || (size_t)w >= sizeof(P.path) || strlen(dir) >= sizeof(P.dir) ||
	    !make_addr(&sun, P.path))
		return -ENAMETOOLONG;
	strcpy(P.dir, dir);
	P.loop = loop;
	P.cancels = cancels;
	P.listeners = listeners;
	P.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (P.fd == -1)
		return -errno;
	/* A file left by an earlier process that had our pid. */
	if ((unlink(P.path) == -1 && errno != ENOENT) ||
	    setsockopt(P.fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == -1 ||
	    bind(P.fd, (struct sockaddr *)&sun, sizeof(sun)) == -1)
		goto fail;
	bound = true;
	/* Whoever may write to it could take our listening sockets: our user only. */
	if (chmod(P.path, 0600) == -1)
		goto fail;
	rc = uv_poll_init(loop, &P.poll, P.fd);
	if (rc < 0)
		goto fail_rc;
	rc = uv_poll_start(&P.poll, UV_READABLE, poll_cb);
	if (rc < 0) {
		uv_close((uv_handle_t *)&P.poll, NULL);
		goto fail_rc;
	}
	atomic_store(&P.started, true);
	log_info("peer socket %s", P.path);
	return 0;
fail:
	rc = -errno;
fail_rc:
	if (bound)
		unlink(P.path);
	close(P.fd);
	P.fd = -1;
	return rc;
}

/* Keeps fds[0..n) unique: the same socket can come from two peers (A handed it to B). */
static bool seen_socket(const int *fds, size_t n, int fd)
{
	struct stat a, b;

	if (fstat(fd, &a) == -1)
		return true;
	for (size_t i = 0; i < n; i++) {
		if (fstat(fds[i], &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
			return true;
	}
	return false;
}

size_t peer_take_listeners(int *fds, size_t cap, unsigned timeout_ms)
{
	const char req = 'L';
	size_t asked, answered = 0, n = 0;
	uint64_t deadline;
	struct peer_msg m = {.len = 0};

	if (P.fd == -1)
		return 0;
	asked = send_to_peers(P.fd, &req, 1);
	deadline = uv_hrtime() / 1000000 + timeout_ms;
	while (answered < asked) {
		uint64_t now = uv_hrtime() / 1000000;
		struct pollfd pfd = {.fd = P.fd, .events = POLLIN};
		int rc;

		if (now >= deadline)
			break;
		rc = poll(&pfd, 1, (int)(deadline - now));
		if (rc == -1 && errno == EINTR)
			continue;
		if (rc <= 0)
			break;
		if (recv_one(&m) < 0)
			continue;
		if (!m.same_user || m.len != 1 || m.buf[0] != 'l') {
			dispatch(&m);
			continue;
		}
		answered++;
		for (size_t i = 0; i < m.nfds; i++) {
			if (n < cap && !seen_socket(fds, n, m.fds[i]))
				fds[n++] = m.fds[i];
			else
				close(m.fds[i]);
		}
	}
	if (answered < asked)
		log_warn("peer: %zu of %zu other processes did not answer within %u ms",
		         asked - answered, asked, timeout_ms);
	return n;
}

void peer_forward_cancel(const uint8_t *packet, size_t len)
{
	uint8_t msg[PEER_MSG_MAX];
	size_t sent;
	int fd;

	if (!atomic_load(&P.started) || len > sizeof(msg) - 1)
		return;
	msg[0] = 'C';
	memcpy(msg + 1, packet, len);
	/* Our own socket belongs to the main loop; any loop may get here. */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	sent = send_to_peers(fd, msg, len + 1);
	close(fd);
	if (sent > 0)
		log_debug("peer: passed a cancel request to %zu other processes", sent);
}

static void poll_close_cb(uv_handle_t *h)
{
	close(P.fd);
	P.fd = -1;
}

void peer_stop(void)
{
	if (!atomic_load(&P.started))
		return;
	atomic_store(&P.started, false);
	unlink(P.path);
	uv_close((uv_handle_t *)&P.poll, poll_close_cb);
}
