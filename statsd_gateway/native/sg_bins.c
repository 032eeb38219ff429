/* DDSketch bins filled as values arrive (see sg_bins.h for the contract). */
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
    if (ln2 == 0.0) sg_set_mapping((1 / log1p(GAMMA_MANTISSA)) * log(2.0), log(2.0),
                                   DBL_MIN * (1 + GAMMA_MANTISSA));
}

/* math.log(av, 2) * mult, rounded up: CPython's math.log(x, base) is log(x) / log(base). */
static inline int32_t key_of(double av) { return (int32_t)ceil(log(av) / ln2 * mult); }

int32_t sg_sketch_key(double av) {
    ensure_mapping();
    return key_of(av);
}

static inline int in_window(const sg_dense *d, int32_t k) {
    return d->c && k >= d->base && k - d->base < (int64_t)d->cap;
}

static inline void count(sg_dense *d, int32_t k, double w) {
    d->keys += d->c[k - d->base] == 0.0; /* weights are > 0: 0 is a key not seen yet */
    d->c[k - d->base] += w;
    if (k < d->lo) d->lo = k;
    if (k > d->hi) d->hi = k;
}

/* Store `neg` of s widened to hold key k, if the limits allow; the spilled values it now
 * covers move into it. Returns 0 (nothing changed) or 1; *moved gets how many moved. */
static int widen(sg_sketch *s, int neg, int32_t k, size_t *moved) {
    sg_dense *d = &s->store[neg];
    int32_t lo = d->c && d->lo < k ? d->lo : k, hi = d->c && d->hi > k ? d->hi : k;
    size_t span = (size_t)((int64_t)hi - lo) + 1;
    size_t limit = SG_DENSE_MIN + 2 * (s->binned + s->n + 1);
    if (limit > SG_DENSE_MAX) limit = SG_DENSE_MAX;
    if (span > limit) return 0;
    size_t cap = span * 2 < SG_DENSE_FIRST ? SG_DENSE_FIRST : span * 2;
    if (cap > SG_DENSE_MAX) cap = SG_DENSE_MAX;
    int32_t base = lo - (int32_t)((cap - span) / 2);
    double *c = sg_xcalloc(cap, sizeof *c);
    if (d->c) {
        memcpy(c + (d->lo - base), d->c + (d->lo - d->base),
               (size_t)(d->hi - d->lo + 1) * sizeof *c);
        free(d->c);
    } else {
        d->lo = d->hi = k;
    }
    d->c = c;
    d->base = base;
    d->cap = (uint32_t)cap;
    size_t kept = 0;
    for (size_t j = 0; j < s->n; j++) {
        double x = s->values[j], w = s->weights ? s->weights[j] : 1.0, ax = fabs(x);
        if (isfinite(x) && ax > min_possible && (x < 0) == neg) {
            int32_t kx = key_of(ax);
            if (in_window(d, kx)) {
                count(d, kx, w);
                s->binned++;
                continue;
            }
        }
        s->values[kept] = x;
        if (s->weights) s->weights[kept] = w;
        kept++;
    }
    *moved = s->n - kept;
    s->n = kept;
    return 1;
}

static void spill(sg_sketch *s, double v, double w) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->values = sg_xrealloc(s->values, s->cap * sizeof(double));
        if (s->weights) s->weights = sg_xrealloc(s->weights, s->cap * sizeof(double));
    }
    if (w != 1.0 && !s->weights) {
        s->weights = sg_xrealloc(NULL, s->cap * sizeof(double));
        for (size_t i = 0; i < s->n; i++) s->weights[i] = 1.0;
    }
    s->values[s->n] = v;
    if (s->weights) s->weights[s->n] = w;
    s->n++;
}

long sg_sketch_add(sg_sketch *s, double v, double w) {
    ensure_mapping();
    double av = fabs(v);
    if (isfinite(av)) {
        if (!(av > min_possible)) {
            s->zero += w;
            s->binned++;
            return 0;
        }
        int neg = v < 0;
        int32_t k = key_of(av);
        size_t moved = 0;
        if (in_window(&s->store[neg], k) || widen(s, neg, k, &moved)) {
            count(&s->store[neg], k, w);
            s->binned++;
            return -(long)moved;
        }
    }
    spill(s, v, w);
    return 1;
}

size_t sg_sketch_export(const sg_sketch *s, int store, int64_t *keys, double *counts) {
    const sg_dense *d = &s->store[store];
    size_t n = 0;
    if (!d->c) return 0;
    for (int32_t k = d->lo; k <= d->hi; k++) {
        double c = d->c[k - d->base];
        if (c == 0.0) continue; /* weights are > 0: a key never seen */
        if (keys) keys[n] = k;
        if (counts) counts[n] = c;
        n++;
    }
    return n;
}

size_t sg_sketch_bytes(const sg_sketch *s) {
    return (s->store[0].cap + s->store[1].cap) * sizeof(double) +
           s->cap * sizeof(double) * (s->weights ? 2 : 1);
}

void sg_sketch_free(sg_sketch *s) {
    free(s->store[0].c);
    free(s->store[1].c);
    free(s->values);
    free(s->weights);
    memset(s, 0, sizeof *s);
}
