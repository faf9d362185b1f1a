/*
 * sdnotify.h - systemd's notify protocol without libsystemd: one datagram to
 * $NOTIFY_SOCKET. Does nothing when the variable is not set.
 */
#ifndef TR_SDNOTIFY_H
#define TR_SDNOTIFY_H

#include "common.h"

/* state: one or more "KEY=value" lines, e.g. "READY=1\nSTATUS=serving". */
void sdnotify(const char *state);
/* The same, formatted; a message longer than 512 bytes is cut (STATUS= is a summary). */
void sdnotifyf(const char *fmt, ...) PRINTF_LIKE(1, 2);
/* CLOCK_MONOTONIC in microseconds, for "RELOADING=1\nMONOTONIC_USEC=%llu" (Type=notify-reload). */
unsigned long long sdnotify_monotonic_usec(void);

#endif /* TR_SDNOTIFY_H */
