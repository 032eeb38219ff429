/* A libFuzzer target for the native window quantiles, sg_window_quantiles() (sg_windows.h).
 *
 * Built and run by `SG_FUZZ_TARGET=windows fuzz/run.sh` (clang, -fsanitize=fuzzer,address,
 * undefined,float-cast-overflow; sg_windows.c alone). An input is eight option bytes, then what
 * the arrays are made of, read byte by byte (zeros past the end):
 * - byte 0: groups (0-8); byte 1: cells (0-16); byte 2: items (0-64); byte 3: q, from QS;
 *   byte 4: max_cost, from COSTS (index 0: the Python caller's, 64 × bins + 4,000,000);
 *   byte 5: a damage, from the enum below; byte 6: where; byte 7: bit 0 "raw", bit 1 "alias".
 * - Not raw: well-formed inputs as sketch.FlatBins holds them (each item a group, a cell, up to
 *   7 positive and 7 negative bins with increasing keys, integral counts from 1 to 200 or now
 *   and then 2**50, a zero count; keys now and then 100,000 away), windows that never move
 *   backwards, then at most one damage. Without one, the answer is checked against a slow
 *   reference written here from sketch/_quantile.py's quantile() of each window's merge (its
 *   float comparisons, not the kernel's ceil and floor), and the status against the rules
 *   (2**53, the cost); with one, the status is the one the damage calls for.
 * - Raw: every array from the bytes as they come (keys and counts from tables of odd values,
 *   bounds, groups, cells and windows nearly anything); "alias": the key output is also the
 *   bounds or the keys input, so that the kernel's inputs change while it reads them. Checked:
 *   the status is one of SG_W_*, with a reason exactly when SG_W_BAD, an answer's kinds known
 *   and its keys within the keys given, and (not aliased) the same answer a second time.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sg_windows.h"

#define FUZZ_NAME "sg_windows_fuzz"
#include "fuzz_check.h"

#define MAX_BINS 7
#define SAFE_INT 9007199254740992.0

static const double QS[16] = {0.0, 1.0, 0.5, 0.99, 0.01, 0.25, 0.9, 0.999, 1.0 / 3, 5e-324,
                              1.0 - 0x1p-53, 0.75, 0.1, 0.3333, 0.66, 0.05};
/* Past 2**24 a wide key could ask for more scratch than the fuzzer's memory limit. */
static const uint64_t COSTS[8] = {0, 0, 10, 100, 1000, 20000, 1 << 22, 1 << 24};
static const double ODD_COUNTS[16] = {1.0,     2.0,  0.0,   0.5,    -1.0, NAN,
                                      INFINITY, 0x1p52, SAFE_INT, 1e300, -0.0, 5e-324,
                                      3.0,     0x1p52 + 1, 7.0, -INFINITY};
static const int64_t ODD_KEYS[8] = {0, 1, -1, INT64_MIN, INT64_MAX, 100000, -100000, 1 << 30};

enum {
    DAMAGE_NONE,
    DAMAGE_GROUP,  /* an item's group out of range: BAD */
    DAMAGE_CELL,   /* an item's cell out of range: BAD */
    DAMAGE_BOUNDS, /* a bound above the next: BAD */
    DAMAGE_WINDOW, /* a window past the cells or backwards: BAD */
    DAMAGE_COUNT,  /* a count not an integer in [0, 2**53): INEXACT */
    DAMAGE_KEY,    /* a key at INT64_MIN or INT64_MAX: as the rules say (TOO_WIDE beside another) */
    DAMAGE_Q,      /* q outside [0, 1]: BAD */
    DAMAGES
};

typedef struct {
    const uint8_t *p;
    size_t n, at;
} reader;

static unsigned byte(reader *r) { return r->at < r->n ? r->p[r->at++] : 0; }

typedef struct {
    int64_t *keys, *bounds, *group, *cell, *lo, *hi;
    double *counts, *zero;
    size_t nbins, n, n_windows;
    int64_t n_groups, n_cells;
} arrays;

static void *alloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    CHECK(p, "out of memory");
    return p;
}

static void free_arrays(arrays *a) {
    free(a->keys);
    free(a->bounds);
    free(a->group);
    free(a->cell);
    free(a->lo);
    free(a->hi);
    free(a->counts);
    free(a->zero);
}

/* `n` items' arrays, room for every bin they may have (2 * MAX_BINS each), and for `extra` more
 * int64 in bounds (the alias mode's key output). */
static void make_arrays(arrays *a, size_t n, size_t n_windows, size_t extra) {
    a->n = n;
    a->n_windows = n_windows;
    a->keys = alloc((2 * MAX_BINS * n + 1) * sizeof(int64_t));
    a->counts = alloc((2 * MAX_BINS * n + 1) * sizeof(double));
    a->bounds = alloc((2 * n + 1 + extra) * sizeof(int64_t));
    a->group = alloc(n * sizeof(int64_t));
    a->cell = alloc(n * sizeof(int64_t));
    a->zero = alloc(n * sizeof(double));
    a->lo = alloc(n_windows * sizeof(int64_t));
    a->hi = alloc(n_windows * sizeof(int64_t));
}

/* ---- well-formed inputs */

static int64_t first_key(reader *r) {
    unsigned b = byte(r);
    if (b == 0x80) return byte(r) & 1 ? 100000 : -100000;
    return (int64_t)(int8_t)b * 4;
}

static double a_count(reader *r) {
    unsigned b = byte(r);
    return b == 255 ? 0x1p50 : (double)(1 + b % 200);
}

static void well_formed(reader *r, arrays *a) {
    size_t at = 0;
    for (size_t i = 0; i < a->n; i++) {
        a->group[i] = byte(r) % a->n_groups;
        a->cell[i] = byte(r) % a->n_cells;
        unsigned shape = byte(r), sizes[2] = {shape & 7, (shape >> 3) & 7};
        for (int s = 0; s < 2; s++) {
            a->bounds[2 * i + s] = (int64_t)at;
            int64_t k = first_key(r);
            for (unsigned j = 0; j < sizes[s]; j++) {
                a->keys[at] = k;
                a->counts[at++] = a_count(r);
                k += 1 + byte(r) % 4;
            }
        }
        a->zero[i] = shape >> 6 ? (double)(byte(r) % 4) : 0.0;
    }
    a->bounds[2 * a->n] = (int64_t)at;
    a->nbins = at;
    int64_t lo = 0, hi = 0;
    for (size_t v = 0; v < a->n_windows; v++) {
        unsigned b = byte(r);
        lo += b % 3;
        hi += (b >> 2) % 4;
        if (hi < lo) hi = lo;
        a->lo[v] = lo < a->n_cells ? lo : a->n_cells;
        a->hi[v] = hi < a->n_cells ? hi : a->n_cells;
    }
}

/* Applies damage d at `where`: the status it calls for, or -1 where the rules and the
 * reference still decide (or it could not be done). */
static int damage(arrays *a, int d, unsigned where, double *q) {
    size_t i = a->n ? where % a->n : 0, b = a->nbins ? where % a->nbins : 0;
    switch (d) {
    case DAMAGE_GROUP:
        if (!a->n) return -1;
        a->group[i] = where & 1 ? -1 : a->n_groups;
        return SG_W_BAD;
    case DAMAGE_CELL:
        if (!a->n) return -1;
        a->cell[i] = where & 1 ? -1 : a->n_cells;
        return SG_W_BAD;
    case DAMAGE_BOUNDS: {
        size_t s = where % (2 * a->n + 1);
        if (s == 2 * a->n) {
            a->bounds[s] += 1; /* past the bins */
            return SG_W_BAD;
        }
        a->bounds[s] = a->bounds[s + 1] + 1;
        return SG_W_BAD;
    }
    case DAMAGE_WINDOW: {
        if (!a->n_windows) return -1;
        size_t v = where % a->n_windows;
        if (where & 1)
            a->hi[v] = a->n_cells + 1;
        else if (v && a->lo[v - 1] > 0)
            a->lo[v] = a->hi[v] = a->lo[v - 1] - 1; /* backwards */
        else
            a->lo[v] = a->hi[v] + 1;
        return SG_W_BAD;
    }
    case DAMAGE_COUNT: {
        static const double bad[6] = {0.5, NAN, -1.0, SAFE_INT, INFINITY, 1e300};
        if (where & 8) {
            if (!a->n) return -1;
            a->zero[i] = bad[where % 6];
        } else {
            if (!a->nbins) return -1;
            a->counts[b] = bad[where % 6];
        }
        return SG_W_INEXACT;
    }
    case DAMAGE_KEY:
        if (!a->nbins) return -1;
        a->keys[b] = where & 1 ? INT64_MIN : INT64_MAX;
        return -1;
    case DAMAGE_Q:
        *q = where & 1 ? -0.25 : where & 2 ? 1.5 : NAN;
        return SG_W_BAD;
    }
    return -1;
}

/* ---- the reference: quantile() of the merge of the window's items */

typedef struct {
    int64_t key;
    double count;
} bin;

static int by_key(const void *x, const void *y) {
    const bin *a = x, *b = y;
    return (a->key > b->key) - (a->key < b->key);
}

/* The merged store: bins sorted by key, one per key (counts added): how many. */
static size_t merged(bin *bins, size_t n) {
    if (!n) return 0;
    qsort(bins, n, sizeof *bins, by_key);
    size_t m = 0;
    for (size_t i = 1; i < n; i++) {
        if (bins[i].key == bins[m].key)
            bins[m].count += bins[i].count;
        else
            bins[++m] = bins[i];
    }
    return m + 1;
}

static double sum_of(const bin *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += b[i].count;
    return s;
}

static void reference(const arrays *a, int64_t g, int64_t lo, int64_t hi, double q, bin *scratch,
                      uint8_t *kind, int64_t *key) {
    bin *pos = scratch, *neg = scratch + a->nbins;
    size_t np = 0, nn = 0;
    double zero = 0.0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->group[i] != g || a->cell[i] < lo || a->cell[i] >= hi) continue;
        for (int64_t j = a->bounds[2 * i]; j < a->bounds[2 * i + 1]; j++)
            pos[np++] = (bin){a->keys[j], a->counts[j]};
        for (int64_t j = a->bounds[2 * i + 1]; j < a->bounds[2 * i + 2]; j++)
            neg[nn++] = (bin){a->keys[j], a->counts[j]};
        zero += a->zero[i];
    }
    np = merged(pos, np);
    nn = merged(neg, nn);
    double neg_total = sum_of(neg, nn), pos_total = sum_of(pos, np);
    double total = neg_total + zero + pos_total;
    *kind = SG_W_NONE;
    *key = 0;
    if (total == 0) return;
    double rank = q * (total - 1);
    if (rank < neg_total) {
        double reversed_rank = neg_total - rank - 1, cum = 0.0;
        size_t i = 0;
        for (; i < nn; i++) { /* searchsorted(cum, reversed_rank + 1, side="left") */
            cum += neg[i].count;
            if (cum >= reversed_rank + 1) break;
        }
        *kind = SG_W_NEG;
        *key = neg[i < nn ? i : nn - 1].key;
    } else if (rank < zero + neg_total) {
        *kind = SG_W_ZERO;
    } else if (np == 0) {
        *kind = zero > 0 ? SG_W_ZERO : SG_W_NEG;
        *key = zero > 0 ? 0 : neg[0].key;
    } else {
        double x = rank - zero - neg_total, cum = 0.0;
        size_t i = 0;
        for (; i < np; i++) { /* searchsorted(cum, x, side="right") */
            cum += pos[i].count;
            if (cum > x) break;
        }
        *kind = SG_W_POS;
        *key = pos[i < np ? i : np - 1].key;
    }
}

/* What the rules say of well-formed inputs: SG_W_INEXACT (bit 1 << status), SG_W_TOO_WIDE,
 * or SG_W_OK; both of the first two may be (the kernel then says either). */
static unsigned expected(const arrays *a, uint64_t max_cost) {
    double sum = 0.0;
    for (size_t j = 0; j < a->nbins; j++) sum += a->counts[j];
    for (size_t i = 0; i < a->n; i++) sum += a->zero[i];
    unsigned out = sum >= SAFE_INT ? 1u << SG_W_INEXACT : 0;
    __int128 width = 0;
    for (int s = 0; s < 2; s++) {
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (size_t i = 0; i < a->n; i++) {
            for (int64_t j = a->bounds[2 * i + s]; j < a->bounds[2 * i + s + 1]; j++) {
                lo = a->keys[j] < lo ? a->keys[j] : lo;
                hi = a->keys[j] > hi ? a->keys[j] : hi;
            }
        }
        if (lo <= hi) width += (__int128)hi - lo + 1;
    }
    if (width == 0) width = 1;
    __int128 cost = (__int128)a->n_groups * (a->n_cells + (__int128)a->n_windows) * width;
    if (cost > (__int128)max_cost) out |= 1u << SG_W_TOO_WIDE;
    return out ? out : 1u << SG_W_OK;
}

/* ---- raw inputs */

static void raw(reader *r, arrays *a) {
    size_t nb = 0;
    for (size_t s = 0; s <= 2 * a->n; s++) {
        unsigned b = byte(r);
        if (s == 0)
            a->bounds[s] = b == 0xff ? 1 : 0;
        else if (b >= 0xf0) /* anything, now and then */
            a->bounds[s] = (int64_t)(int8_t)byte(r) * 1000;
        else
            a->bounds[s] = (int64_t)(nb += b % 4 > 2 ? 0 : b % 4);
    }
    a->nbins = byte(r) & 1 ? nb + byte(r) % 3 : nb;
    if (a->nbins > 2 * MAX_BINS * a->n) a->nbins = 2 * MAX_BINS * a->n;
    for (size_t j = 0; j < a->nbins; j++) {
        unsigned b = byte(r);
        a->keys[j] = b & 0x80 ? ODD_KEYS[b & 7] : (int64_t)(b & 0x7f) - 60;
        b = byte(r);
        a->counts[j] = b & 0x80 ? ODD_COUNTS[b & 15] : (double)(b & 0x7f);
    }
    for (size_t i = 0; i < a->n; i++) {
        unsigned b = byte(r);
        a->group[i] = (int64_t)(b % (a->n_groups + 2)) - (b & 0x80 ? 1 : 0);
        b = byte(r);
        a->cell[i] = (int64_t)(b % (a->n_cells + 2)) - (b & 0x80 ? 1 : 0);
        b = byte(r);
        a->zero[i] = b & 0x80 ? ODD_COUNTS[b & 15] : (double)(b & 3);
    }
    for (size_t v = 0; v < a->n_windows; v++) {
        a->lo[v] = (int64_t)(int8_t)byte(r) % 20;
        a->hi[v] = (int64_t)(int8_t)byte(r) % 20;
    }
}

static void check_status(int s, const sg_windows *w) {
    CHECK(s >= SG_W_OK && s <= SG_W_NOMEM, "status %d", s);
    CHECK((s == SG_W_BAD) == (w->error != NULL), "status %d, error %s", s,
          w->error ? w->error : "(none)");
}

/* Every kind known, every key within the least and largest given; the same a second time. */
static void check_raw_answer(sg_windows *w, const arrays *a, const uint8_t *kind,
                             const int64_t *key, size_t cells) {
    int64_t least = INT64_MAX, most = INT64_MIN;
    for (size_t j = 0; j < a->nbins; j++) {
        least = a->keys[j] < least ? a->keys[j] : least;
        most = a->keys[j] > most ? a->keys[j] : most;
    }
    for (size_t c = 0; c < cells; c++) {
        CHECK(kind[c] <= SG_W_POS, "kind %u", kind[c]);
        if (kind[c] == SG_W_NEG || kind[c] == SG_W_POS)
            CHECK(least <= key[c] && key[c] <= most, "key %lld of kind %u outside [%lld, %lld]",
                  (long long)key[c], kind[c], (long long)least, (long long)most);
        else
            CHECK(key[c] == 0, "key %lld of kind %u", (long long)key[c], kind[c]);
    }
    uint8_t *kind2 = alloc(cells);
    int64_t *key2 = alloc(cells * sizeof *key2);
    w->kind = kind2;
    w->key = key2;
    int s2 = sg_window_quantiles(w);
    CHECK(s2 == SG_W_OK && !memcmp(kind, kind2, cells) && !memcmp(key, key2, cells * sizeof *key),
          "a second run answered otherwise (%d)", s2);
    free(kind2);
    free(key2);
}

/* Every window of every group as the reference answers it. */
static void check_answer(const arrays *a, double q, const uint8_t *kind, const int64_t *key) {
    bin *scratch = alloc(2 * (a->nbins + 1) * sizeof *scratch);
    for (int64_t g = 0; g < a->n_groups; g++) {
        for (size_t v = 0; v < a->n_windows; v++) {
            uint8_t k;
            int64_t kk;
            reference(a, g, a->lo[v], a->hi[v], q, scratch, &k, &kk);
            size_t c = (size_t)g * a->n_windows + v;
            CHECK(kind[c] == k && key[c] == kk,
                  "group %lld window %zu [%lld, %lld) q %.17g: kind %u key %lld, the "
                  "reference's kind %u key %lld",
                  (long long)g, v, (long long)a->lo[v], (long long)a->hi[v], q, kind[c],
                  (long long)key[c], k, (long long)kk);
        }
    }
    free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size, 0};
    unsigned opt[8];
    for (int i = 0; i < 8; i++) opt[i] = byte(&r);
    int is_raw = opt[7] & 1, alias = is_raw && (opt[7] & 2);
    arrays a = {0};
    a.n_groups = opt[0] % 9;
    a.n_cells = opt[1] % 17;
    size_t n = a.n_groups && a.n_cells ? opt[2] % 65 : 0;
    if (is_raw) n = opt[2] % 65;
    size_t n_windows = byte(&r) % 25, cells = (size_t)a.n_groups * n_windows;
    make_arrays(&a, n, n_windows, cells);
    double q = QS[opt[3] % 16];
    uint64_t max_cost = COSTS[opt[4] % 8];
    int want = -1;
    if (is_raw) {
        raw(&r, &a);
        if (opt[3] & 0x80) q = opt[3] & 0x40 ? NAN : 1.0 + (opt[3] & 3);
    } else {
        well_formed(&r, &a);
        if (opt[5] % DAMAGES != DAMAGE_NONE)
            want = damage(&a, (int)(opt[5] % DAMAGES), opt[6], &q);
    }
    if (!max_cost) max_cost = 64 * (uint64_t)a.nbins + 4000000;
    uint8_t *kind = alloc(cells);
    int64_t *key = alloc(cells * sizeof *key);
    sg_windows w = {
        .keys = a.keys, .counts = a.counts, .nbins = a.nbins, .bounds = a.bounds,
        .zero = a.zero, .n = a.n, .item_group = a.group, .item_cell = a.cell,
        .n_groups = a.n_groups, .n_cells = a.n_cells, .lo = a.lo, .hi = a.hi,
        .n_windows = a.n_windows, .q = q, .max_cost = max_cost, .kind = kind, .key = key,
    };
    if (alias) w.key = opt[6] & 1 ? a.bounds : a.keys; /* room for `cells` int64 either way */
    if (alias && !(opt[6] & 1) && cells > 2 * MAX_BINS * n + 1) w.key = a.bounds;
    int s = sg_window_quantiles(&w);
    check_status(s, &w);
    if (is_raw) {
        if (s == SG_W_OK && !alias) check_raw_answer(&w, &a, kind, key, cells);
    } else if (want >= 0) {
        /* The rules' order: a status the damage calls for, or one an earlier rule gives. */
        unsigned ok = 1u << want;
        if (want == SG_W_INEXACT)
            ok |= expected(&a, max_cost) & (1u << SG_W_INEXACT | 1u << SG_W_TOO_WIDE);
        CHECK(ok & (1u << s), "damage %u: status %d, not %d", opt[5] % DAMAGES, s, want);
    } else {
        unsigned ok = expected(&a, max_cost);
        CHECK(ok & (1u << s), "status %d, expected mask %u", s, ok);
        if (s == SG_W_OK) check_answer(&a, q, kind, key);
    }
    free(kind);
    free(key);
    free_arrays(&a);
    return 0;
}
