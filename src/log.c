/*
 * log.c - leveled logging to stderr.
 *
 * Each line is formatted into one buffer and written with a single write(2),
 * so lines from several threads never interleave. The level is a plain
 * atomic so that a reload can change it while other threads log.
 */
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static _Atomic int cur_level = LOG_INFO;
static bool journal;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};
/* syslog priorities: err, warning, info, debug, debug */
static const int level_prio[] = {3, 4, 6, 7, 7};

size_t log_limit_hit(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms)
{
	size_t n;

	l->held++;
	if (now_ms < l->next_ms)
		return 0;
	n = l->held;
	l->held = 0;
	l->next_ms = now_ms + interval_ms;
	return n;
}

size_t log_limit_due(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms)
{
	size_t n = l->held;

	if (n == 0 || now_ms < l->next_ms)
		return 0;
	l->held = 0;
	l->next_ms = now_ms + interval_ms;
	return n;
}

void log_init(void)
{
	journal = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(enum log_level level)
{
	atomic_store(&cur_level, (int)level);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load_explicit(&cur_level, memory_order_relaxed);
}

bool log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return true;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		*out = LOG_WARN;
		return true;
	}
	return false;
}

const char *log_level_name(enum log_level level)
{
	return level_names[level];
}

void log_vmsg(enum log_level level, const char *prefix, const char *fmt, va_list ap)
{
	char line[2048];
	size_t n = 0;
	int r;

	if (!log_enabled(level))
		return;
	if (journal) {
		r = snprintf(line, sizeof(line), "<%d>", level_prio[level]);
	} else {
		struct timeval tv;
		struct tm tm;

		gettimeofday(&tv, NULL);
		localtime_r(&tv.tv_sec, &tm);
		r = snprintf(line, sizeof(line), "%04d-%02d-%02d %02d:%02d:%02d.%03d %s ",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level]);
	}
	n = r > 0 ? (size_t)r : 0;
	if (prefix && n < sizeof(line)) {
		r = snprintf(line + n, sizeof(line) - n, "%s ", prefix);
		n += r > 0 ? (size_t)r : 0;
	}
	if (n < sizeof(line)) {
		r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		n += r > 0 ? (size_t)r : 0;
	}
	if (n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* A failed write to stderr has nowhere to be reported. */
	if (write(STDERR_FILENO, line, n) == -1)
		return;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, NULL, fmt, ap);
	va_end(ap);
}

void log_first_line(char *dst, size_t cap, const char *msg, bool strip_error)
{
	size_t n;

	if (msg == NULL || *msg == '\0')
		msg = "unknown error";
	n = strcspn(msg, "\n");
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, msg, n);
	dst[n] = '\0';
	if (strip_error && strncmp(dst, "ERROR:  ", 8) == 0)
		memmove(dst, dst + 8, strlen(dst + 8) + 1);
}
