/*
 * log.h - leveled logging to stderr.
 *
 * One line per event, lower-case, key=value for greppable parts. When
 * JOURNAL_STREAM is set (we run under systemd) each line gets a syslog
 * priority prefix ("<3>") and no timestamp of our own.
 */
#ifndef TR_LOG_H
#define TR_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE };

void log_init(void);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error".."trace"; returns false for anything else. */
bool log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);
/*
 * The first line of msg (a libpq error text, maybe NULL) into dst, for one
 * log line; with strip_error also without libpq's "ERROR:  " prefix.
 */
void log_first_line(char *dst, size_t cap, const char *msg, bool strip_error);

void log_msg(enum log_level level, const char *fmt, ...) PRINTF_LIKE(2, 3);
void log_vmsg(enum log_level level, const char *prefix, const char *fmt, va_list ap)
	PRINTF_LIKE(3, 0);

/*
 * A line that could repeat thousands of times a second (accept failures,
 * connections refused for want of descriptors) goes out at most once per
 * interval and says how many events it stands for. Not thread-safe: keep
 * one per event loop.
 */
struct log_limit {
	uint64_t next_ms; /* no line before this */
	size_t held;	  /* events since the last line */
};

/*
 * Counts one event at now_ms. Returns how many events a line logged now
 * stands for (this one and those held back since the last line), or 0 when
 * the caller must stay quiet.
 */
size_t log_limit_hit(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms);

/*
 * Events held back whose line is due by now_ms (0 if none): for a caller
 * that reports the tail of a burst when it next passes by, with no timer.
 */
size_t log_limit_due(struct log_limit *l, uint64_t now_ms, uint64_t interval_ms);

static inline bool log_enabled(enum log_level level)
{
	return level <= log_get_level();
}

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                 \
	do {                                           \
		if (log_enabled(LOG_DEBUG))            \
			log_msg(LOG_DEBUG, __VA_ARGS__); \
	} while (0)
#define log_trace(...)                                 \
	do {                                           \
		if (log_enabled(LOG_TRACE))            \
			log_msg(LOG_TRACE, __VA_ARGS__); \
	} while (0)

#endif /* TR_LOG_H */
