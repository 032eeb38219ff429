/* DDSketch bins of one series-bucket, filled as its values arrive (sg_core.c's add_value), so
 * that a timer's values are not kept one by one until the flush.
 *
 * Contract (the reference is sketch/_binning.py's bin_flat, fed the same values and weights in
 * arrival order; tests/test_native_parity.py holds the two to identical bins):
 * - A value's key is the mapping's (sketch/_mapping.py's key_of: ceil(log(|v|) / ln 2 * mult)
 *   with libm's log, which is what CPython's math.log calls), with the constants Python hands
 *   over (sg_set_mapping). |v| <= min_possible counts in `zero`; v < 0 in store 1, by |v|.
 * - Each store counts its keys densely over a window that grows as keys arrive, at most
 *   SG_DENSE_MIN + 2 per value seen and SG_DENSE_MAX keys wide (so a flood of wide-ranging
 *   series costs a bounded number of bytes per value). A value whose key is outside the window
 *   and cannot widen it, and any non-finite value, goes to the spill: kept as received, binned
 *   by Python at the flush.
 * - Bin weights add in arrival order, as bin_flat's do. A key outside a window has every
 *   weight it got so far in the spill, in arrival order; widening the window over it moves
 *   them into it in that order (before any later weight of that key), and a key inside never
 *   leaves. So the spill (binned by Python at the flush) and the windows never share a key,
 *   and together they are exactly bin_flat's bins of every value, for any weights.
 */
#ifndef SG_BINS_H
#define SG_BINS_H

#include <stddef.h>
#include <stdint.h>

#define SG_DENSE_FIRST 4 /* the first window's keys: one value costs few bytes */
#define SG_DENSE_MIN 32
#define SG_DENSE_MAX 2048

typedef struct {
    double *c;            /* c[k - base]: the weight of key k; NULL until a key arrives */
    int32_t base, lo, hi; /* lo..hi: the keys with a weight */
    uint32_t cap, keys;   /* keys: how many have a weight */
} sg_dense;

typedef struct {
    sg_dense store[2];        /* 0: v > 0, 1: v < 0 (keyed by |v|) */
    double zero;              /* the weight of values with |v| <= min_possible */
    size_t binned;            /* values counted in store[] or zero */
    double *values, *weights; /* the spill; weights only once a weight != 1 arrived */
    size_t n, cap;
} sg_sketch;

/* The mapping's constants, as Python computed them (before any value is added). */
void sg_set_mapping(double mult, double ln2, double min_possible);

/* The key of |v| (finite, > min_possible). */
int32_t sg_sketch_key(double av);

/* Adds value v of weight w (> 0); returns the change in the number of spilled values. */
long sg_sketch_add(sg_sketch *s, double v, double w);

/* The keys with a weight of store i, increasing, and their weights, into keys/counts when they
 * are not NULL; returns how many. */
size_t sg_sketch_export(const sg_sketch *s, int store, int64_t *keys, double *counts);

size_t sg_sketch_bytes(const sg_sketch *s);
void sg_sketch_free(sg_sketch *s);

#endif
