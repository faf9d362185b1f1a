/*
 * sdnotify.c - "READY=1", "RELOADING=1", "STOPPING=1" to systemd.
 *
 * The protocol is a single datagram on the AF_UNIX socket named by
 * NOTIFY_SOCKET ('@' at the start means the abstract namespace). Failures are
 * ignored on purpose: a missing notification only delays systemd's view.
 * systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1
 * so that it can tell this reload's READY=1 from an earlier one's.
 */
#include "sdnotify.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

void sdnotify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t plen;
	socklen_t alen;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@'))
		return;
	plen = strlen(path);
	if (plen >= sizeof(sun.sun_path))
		return;
	memcpy(sun.sun_path, path, plen);
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0';
	alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, alen) == -1) {
		/* Nothing to do: systemd is not listening. */
	}
	close(fd);
}

void sdnotifyf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sdnotify(buf);
}

unsigned long long sdnotify_monotonic_usec(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0;
	return (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
}
