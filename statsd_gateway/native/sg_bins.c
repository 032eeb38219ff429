/* DDSketch binning of buffered timer values (see sg_bins.h for the contract). */
#include "sg_bins.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sg_core.h"

/* ddsketch's LogarithmicMapping(0.01), computed as sketch/_mapping.py computes it; Python
 * replaces these with its own values at import, so the two can never differ. */
#define GAMMA_MANTISSA (2 * 0.01 / (1 - 0.01))
static double mult = 0.0, ln2 = 0.0, min_possible = 0.0;

void sg_set_mapping(double m, double l, double mp) {
    mult = m;
    ln2 = l;
    min_possible = mp;
}

static void ensure_mapping(void) {
    if (ln2 == 0.0)
        sg_set_mapping((1 / log1p(GAMMA_MANTISSA)) * log(2.0), log(2.0),
                       DBL_MIN * (1 + GAMMA_MANTISSA));
}

/* A value's code in the scratch: its key times 2, plus 1 in the negative store. */
#define ZERO_CODE INT32_MIN

void sg_binner_free(sg_binner *b) {
    free(b->codes);
    free(b->order);
    free(b->dense);
    memset(b, 0, sizeof *b);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Store s's keys and weights (its values' keys lo..hi, `count` of them) into keys/counts;
 * returns how many keys. Dense over lo..hi where that is not much wider than the values are
 * many, else through a sort of (key, position): weights add in the values' order either way. */
static size_t bin_store(sg_binner *b, int s, const double *w, size_t n, int32_t lo, int32_t hi,
                        size_t count, int64_t *keys, double *counts) {
    const int32_t *codes = b->codes;
    size_t span = (size_t)((int64_t)hi - lo) + 1, out = 0;
    if (span <= 4 * count + 64) {
        if (b->cap_dense < span) {
            b->cap_dense = span;
            b->dense = sg_xrealloc(b->dense, span * sizeof *b->dense);
        }
        double *d = b->dense;
        memset(d, 0, span * sizeof *d);
        for (size_t j = 0; j < n; j++) {
            int32_t c = codes[j];
            if (c == ZERO_CODE || (c & 1) != s) continue;
            d[(c >> 1) - lo] += w ? w[j] : 1.0;
        }
        for (size_t i = 0; i < span; i++) {
            if (d[i] == 0.0) continue; /* weights are > 0: a key no value has */
            keys[out] = lo + (int64_t)i;
            counts[out++] = d[i];
        }
        return out;
    }
    uint64_t *order = b->order;
    size_t m = 0;
    for (size_t j = 0; j < n; j++) {
        int32_t c = codes[j];
        if (c == ZERO_CODE || (c & 1) != s) continue;
        order[m++] = ((uint64_t)((int64_t)(c >> 1) - lo) << 32) | j;
    }
    qsort(order, m, sizeof *order, cmp_u64);
    for (size_t i = 0; i < m; i++) {
        int64_t k = lo + (int64_t)(order[i] >> 32);
        size_t j = (size_t)(order[i] & 0xffffffffu);
        double weight = w ? w[j] : 1.0;
        if (out && keys[out - 1] == k) {
            counts[out - 1] += weight;
        } else {
            keys[out] = k;
            counts[out++] = 0.0 + weight; /* from 0, as bincount adds */
        }
    }
    return out;
}

long sg_bin_series(sg_binner *b, const double *v, const double *w, size_t n, int64_t *keys,
                   double *counts, size_t *npos, double *zero) {
    ensure_mapping();
    if (n > UINT32_MAX) return -1;
    if (b->cap_values < n) {
        b->cap_values = n;
        b->codes = sg_xrealloc(b->codes, n * sizeof *b->codes);
        b->order = sg_xrealloc(b->order, n * sizeof *b->order);
    }
    int32_t lo[2] = {INT32_MAX, INT32_MAX}, hi[2] = {INT32_MIN, INT32_MIN};
    size_t count[2] = {0, 0};
    double z = 0.0;
    for (size_t j = 0; j < n; j++) {
        double x = v[j], a = fabs(x);
        if (!isfinite(x)) return -1;
        if (w && !(isfinite(w[j]) && w[j] > 0)) return -1; /* bin_flat refuses it too */
        if (!(a > min_possible)) {
            b->codes[j] = ZERO_CODE;
            z += w ? w[j] : 1.0;
            continue;
        }
        /* math.log(a, 2) * mult, rounded up: CPython's math.log(x, base) is log(x)/log(base) */
        int32_t k = (int32_t)ceil(log(a) / ln2 * mult);
        int s = x < 0;
        b->codes[j] = k * 2 + s;
        if (k < lo[s]) lo[s] = k;
        if (k > hi[s]) hi[s] = k;
        count[s]++;
    }
    size_t pos = count[0] ? bin_store(b, 0, w, n, lo[0], hi[0], count[0], keys, counts) : 0;
    size_t neg =
        count[1] ? bin_store(b, 1, w, n, lo[1], hi[1], count[1], keys + pos, counts + pos) : 0;
    *npos = pos;
    *zero = z;
    return (long)(pos + neg);
}

int sg_bin_run(sg_binner *b, const double *v, const double *w, size_t n, size_t i,
               int64_t *keys, double *counts, int64_t *bounds, double *zero, size_t *at) {
    size_t npos = 0;
    long got = sg_bin_series(b, v, w, n, keys + *at, counts + *at, &npos, &zero[i]);
    if (got < 0) return -1;
    bounds[2 * i + 1] = (int64_t)(*at + npos);
    *at += (size_t)got;
    bounds[2 * i + 2] = (int64_t)*at;
    return 0;
}
