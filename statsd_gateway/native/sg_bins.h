/* DDSketch binning of timer values in C: what sketch/_binning.py's bin_flat does with numpy,
 * for the values the native core buffered, run by the flush off the event loop (the Python
 * module releases the GIL around it).
 *
 * Contract (the reference is bin_flat; tests/test_native_parity.py holds the two to identical
 * bins, bit for bit):
 * - A value's key is the mapping's (sketch/_mapping.py's key_of: ceil(log(|v|) / ln 2 * mult)
 *   with libm's log, which is what CPython's math.log calls), with the constants Python hands
 *   over (sg_set_mapping). |v| <= min_possible counts in the zero bucket; v < 0 in the negative
 *   store, by |v|.
 * - Each series' bins: the positive store's keys increasing, then the negative store's, each
 *   key's weights added in the values' order (as bin_flat's bincount adds them), then the zero
 *   bucket's weight.
 * - Values must be finite and weights finite and > 0: sg_bin_series returns -1 at the first
 *   that is not (the caller then leaves the error to bin_flat, which names it).
 */
#ifndef SG_BINS_H
#define SG_BINS_H

#include <stddef.h>
#include <stdint.h>

/* The mapping's constants, as Python computed them (before any binning). */
void sg_set_mapping(double mult, double ln2, double min_possible);

/* Scratch space reused across series (grown as needed; zero it to start, free it with
 * sg_binner_free). */
typedef struct {
    int32_t *codes;  /* per value: key * 2 + (1 if negative), or INT32_MIN for the zero bucket */
    uint64_t *order; /* a store's (key - lo, position) pairs, sorted, where its keys are far apart */
    double *dense;   /* a store's weights by key - lo, where they are close together */
    size_t cap_values, cap_dense;
} sg_binner;

void sg_binner_free(sg_binner *b);

/* Bins n values (weights w, or 1 each when w is NULL) into keys/counts (room for n each):
 * returns the number of positive keys in *npos, the zero bucket's weight in *zero and the
 * number of keys written, or -1 if a value is not finite or a weight not finite and > 0. */
long sg_bin_series(sg_binner *b, const double *v, const double *w, size_t n, int64_t *keys,
                   double *counts, size_t *npos, double *zero);

/* Series i of many binned into one flat run (sketch.FlatBins' layout): its bins at keys/counts
 * + *at, its bounds at bounds[2i + 1] (the end of its positive keys) and bounds[2i + 2] (its
 * end; bounds[0] is 0), its zero bucket's weight in zero[i]; *at moves past them. 0, or -1 as
 * sg_bin_series. */
int sg_bin_run(sg_binner *b, const double *v, const double *w, size_t n, size_t i,
               int64_t *keys, double *counts, int64_t *bounds, double *zero, size_t *at);

#endif
