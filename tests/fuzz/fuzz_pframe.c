/*
 * fuzz_pframe.c - differential libFuzzer target for the pooled session's
 * framer (src/pframe.c).
 *
 * The input is split in three: client bytes, server bytes and a cut list.
 * Both streams are fed to one framer whole and to another cut at the
 * listed points (alternating directions the way reads interleave). Checks:
 *   - cut and whole agree on everything: how many client bytes may go, the
 *     Terminate, the counts, the transaction status, the verdict;
 *   - the bytes allowed to go are a prefix of the client stream that ends
 *     right before an 'X' when a Terminate was found;
 *   - a framer never calls a stream clean in the middle of a message.
 *
 * Build: see tests/fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pframe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                       \
	do {                                                                              \
		if (!(cond)) {                                                            \
			fprintf(stderr, "fuzz_pframe: check failed: %s (%s:%d)\n", #cond, \
			        __FILE__, __LINE__);                                      \
			abort();                                                          \
		}                                                                         \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pframe whole, cut;
	size_t clen, slen, ncuts, sent_whole, sent_cut = 0, coff = 0, soff = 0;
	const uint8_t *c, *s, *cuts;
	char tw, tc;
	bool cw, cc;

	if (size < 3)
		return 0;
	clen = (size_t)data[0] * (size - 2) / 255;
	slen = (size_t)data[1] * (size - 2 - clen) / 255;
	c = data + 2;
	s = c + clen;
	cuts = s + slen;
	ncuts = size - 2 - clen - slen;

	pframe_init(&whole);
	sent_whole = pframe_client(&whole, c, clen);
	pframe_server(&whole, s, slen);

	pframe_init(&cut);
	for (size_t i = 0; coff < clen || soff < slen; i++) {
		size_t step = ncuts ? (size_t)cuts[i % ncuts] % 64 + 1 : 7;
		size_t k;

		if (coff < clen) {
			k = step < clen - coff ? step : clen - coff;
			if (!cut.terminated)
				sent_cut += pframe_client(&cut, c + coff, k);
			else
				CHECK(pframe_client(&cut, c + coff, k) == 0);
			coff += k;
		}
		if (soff < slen) {
			k = step < slen - soff ? step : slen - soff;
			pframe_server(&cut, s + soff, k);
			soff += k;
		}
	}
	CHECK(sent_cut == sent_whole);
	CHECK(cut.terminated == whole.terminated);
	CHECK(cut.syncs == whole.syncs && cut.zs == whole.zs);
	CHECK(cut.unsynced == whole.unsynced && cut.c.broken == whole.c.broken &&
	      cut.s.broken == whole.s.broken);
	CHECK(cut.txn == whole.txn && cut.zbody == whole.zbody);
	cw = pframe_clean(&whole, &tw);
	cc = pframe_clean(&cut, &tc);
	CHECK(cw == cc && tw == tc);
	CHECK(sent_whole <= clen);
	if (whole.terminated)
		CHECK(sent_whole < clen && c[sent_whole] == 'X');
	else if (!whole.c.broken)
		CHECK(sent_whole == clen);
	if (cw)
		CHECK(whole.c.left == 0 && whole.c.hlen == 0 && whole.s.left == 0 &&
		      whole.s.hlen == 0);
	return 0;
}
