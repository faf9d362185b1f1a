/*
 * fuzz_admin.c - libFuzzer target for the admin console's statement parser
 * (admin_parse) and reply builder: any bytes, any length, no crash, no read
 * past the input, and what parses holds only bounded, terminated strings.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so ASan sees any read past the statement. */
	char *sql = malloc(size ? size : 1);
	struct admin_stmt st;
	struct admin_error e;
	struct admin_result r;

	if (sql == NULL)
		return 0;
	memcpy(sql, data, size);
	admin_result_init(&r);
	if (admin_parse(sql, size, &st, &e)) {
		static const char *const cols[] = {"tenant", "cluster"};
		const char *row[2] = {st.tenant, st.cluster};

		if (st.tlen > ADMIN_MAX_TENANT || strlen(st.tenant) != st.tlen ||
		    strlen(st.cluster) > ADMIN_MAX_CLUSTER)
			abort();
		admin_result_columns(&r, cols, 2);
		admin_result_row(&r, row);
		admin_result_complete(&r, admin_cmd_tag(st.cmd));
	} else {
		if (strlen(e.message) >= sizeof(e.message) || e.hint[0] == '\0')
			abort();
		admin_result_error(&r, "42601", e.message, e.hint);
	}
	admin_result_ready(&r);
	admin_result_free(&r);
	free(sql);
	return 0;
}
