/* Quantiles of sliding windows of cells (the contract: sg_windows.h). */
#include "sg_windows.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SAFE_INT 9007199254740992.0 /* 2**53: integers below it add exactly in double */
/* A store's width past which the cost check fails whatever the other factors (and the sum of
 * two widths cannot wrap). */
#define WIDTH_CAP ((uint64_t)1 << 62)

typedef struct {
    int64_t cell, item;
} entry;

typedef struct {
    int64_t min, max;
    int any; /* whether min and max say anything */
} key_range;

static int bad(sg_windows *w, const char *why) {
    w->error = why;
    return SG_W_BAD;
}

/* c is an integer in [0, 2**53) (below 2**52, adding 2**52 rounds c to an integer; past it
 * every double is one): without a branch, so that a whole store's checks are one loop. */
static int integral(double c) {
    return (c >= 0.0) & (c < SAFE_INT) & ((c >= 0x1p52) | ((c + 0x1p52) - 0x1p52 == c));
}

static void widen(key_range *r, int64_t lo, int64_t hi) {
    if (!r->any) {
        *r = (key_range){lo, hi, 1};
        return;
    }
    r->min = lo < r->min ? lo : r->min;
    r->max = hi > r->max ? hi : r->max;
}

static uint64_t width_of(const key_range *r) {
    if (!r->any) return 0;
    uint64_t d = (uint64_t)r->max - (uint64_t)r->min;
    return d >= WIDTH_CAP ? WIDTH_CAP : d + 1;
}

/* What sg_windows.h requires of the bounds, items, windows and q (none reads a bin): SG_W_OK
 * or SG_W_BAD. */
static int check_inputs(sg_windows *w) {
    if (w->n_groups < 0 || w->n_cells < 0) return bad(w, "negative group or cell count");
    const int64_t *b = w->bounds;
    if (b[0] != 0 || (uint64_t)b[2 * w->n] != w->nbins)
        return bad(w, "bounds do not cover the bins");
    for (size_t s = 0; s < 2 * w->n; s++) {
        if (b[s + 1] < b[s]) return bad(w, "bounds decrease");
    }
    for (size_t i = 0; i < w->n; i++) {
        if (w->item_group[i] < 0 || w->item_group[i] >= w->n_groups)
            return bad(w, "an item's group is out of range");
        if (w->item_cell[i] < 0 || w->item_cell[i] >= w->n_cells)
            return bad(w, "an item's cell is out of range");
    }
    for (size_t v = 0; v < w->n_windows; v++) {
        if (w->lo[v] < 0 || w->lo[v] > w->hi[v] || w->hi[v] > w->n_cells)
            return bad(w, "a window is not within the cells");
        if (v && (w->lo[v] < w->lo[v - 1] || w->hi[v] < w->hi[v - 1]))
            return bad(w, "windows move backwards");
    }
    if (!(w->q >= 0.0 && w->q <= 1.0)) return bad(w, "q is not within [0, 1]");
    return SG_W_OK;
}

static int too_wide(const sg_windows *w, uint64_t width) {
    uint64_t span, cost;
    if (__builtin_add_overflow((uint64_t)w->n_cells, (uint64_t)w->n_windows, &span)) return 1;
    if (__builtin_mul_overflow((uint64_t)w->n_groups, span, &cost)) return 1;
    if (__builtin_mul_overflow(cost, width, &cost)) return 1;
    return cost > w->max_cost;
}

static int by_cell(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->cell != y->cell) return x->cell < y->cell ? -1 : 1;
    return (x->item > y->item) - (x->item < y->item);
}

/* The items in order of group, then cell: order[start[g]:start[g + 1]] are group g's. Each
 * item's group and cell are read once, into snap[i] = (cell, group) (what follows never reads
 * them again): -1 where they are no longer what check_inputs saw. */
static int sort_items(const sg_windows *w, entry *snap, entry *order, size_t *start) {
    for (size_t i = 0; i < w->n; i++) {
        int64_t g = w->item_group[i], c = w->item_cell[i];
        if (g < 0 || g >= w->n_groups || c < 0 || c >= w->n_cells) return -1;
        snap[i] = (entry){c, g};
        start[g + 1]++;
    }
    for (int64_t g = 0; g < w->n_groups; g++) start[g + 1] += start[g];
    for (size_t i = 0; i < w->n; i++)
        order[start[snap[i].item]++] = (entry){snap[i].cell, (int64_t)i};
    for (int64_t g = w->n_groups; g > 0; g--) start[g] = start[g - 1];
    start[0] = 0;
    for (int64_t g = 0; g < w->n_groups; g++) {
        entry *e = order + start[g];
        size_t m = start[g + 1] - start[g];
        for (size_t i = 1; i < m; i++) {
            if (e[i].cell < e[i - 1].cell) {
                qsort(e, m, sizeof *e, by_cell);
                break;
            }
        }
    }
    return 0;
}

/* One group's dense counts: pos[k - pos_min] and neg[k - neg_min], and their totals. */
typedef struct {
    double *pos, *neg;
    uint64_t n_pos, n_neg;
    int64_t pos_min, neg_min;
    double pos_total, neg_total, zero;
} window;

/* The sum of counts[from:to] (two sums, for speed: integers, exact in any order), their keys'
 * least and largest into *lo and *hi, and into *ok whether every count is integral(). */
static double scan_store(const int64_t *keys, const double *counts, int64_t from, int64_t to,
                         int64_t *lo, int64_t *hi, int *ok) {
    int64_t least = keys[from], most = least;
    double s0 = 0.0, s1 = 0.0;
    int all = 1;
    int64_t j = from;
    for (; j + 1 < to; j += 2) {
        int64_t k0 = keys[j], k1 = keys[j + 1];
        double c0 = counts[j], c1 = counts[j + 1];
        least = k0 < least ? k0 : least;
        least = k1 < least ? k1 : least;
        most = k0 > most ? k0 : most;
        most = k1 > most ? k1 : most;
        all &= integral(c0) & integral(c1);
        s0 += c0;
        s1 += c1;
    }
    if (j < to) {
        least = keys[j] < least ? keys[j] : least;
        most = keys[j] > most ? keys[j] : most;
        all &= integral(counts[j]);
        s0 += counts[j];
    }
    *lo = least;
    *hi = most;
    *ok &= all;
    return s0 + s1;
}

/* The key range of each store of the items e[0:m] (ranges[0] positive, [1] negative), each
 * item's sum of counts per store into sums[2 * item + store], and all of them with the zero
 * counts added to *sum: SG_W_OK, SG_W_INEXACT (a count that is not an integer in [0, 2**53)),
 * or -1 where the bounds are no longer what check_inputs saw. Keys are not assumed increasing
 * (the numpy path does not need them so). */
static int scan_group(const sg_windows *w, const entry *e, size_t m, key_range ranges[2],
                      double *sums, double *sum) {
    int ok = 1;
    double total = *sum;
    for (size_t i = 0; i < m; i++) {
        const int64_t *b = w->bounds + 2 * e[i].item;
        int64_t b0 = b[0], b1 = b[1], b2 = b[2];
        if (b0 < 0 || b1 < b0 || b2 < b1 || (uint64_t)b2 > w->nbins) return -1;
        for (int s = 0; s < 2; s++) {
            int64_t from = s ? b1 : b0, to = s ? b2 : b1, lo, hi;
            double part = 0.0;
            if (from < to) {
                part = scan_store(w->keys, w->counts, from, to, &lo, &hi, &ok);
                widen(&ranges[s], lo, hi);
            }
            sums[2 * e[i].item + s] = part;
            total += part;
        }
        double z = w->zero[e[i].item];
        ok &= integral(z);
        total += z;
    }
    *sum = total;
    return ok ? SG_W_OK : SG_W_INEXACT;
}

/* Adds sign (1 or -1) times counts[from:to] to dense[key - min] (of n): 0, or -1 where a key is
 * outside (the keys are no longer what scan_group saw: another thread wrote them). */
static int add_store(const int64_t *keys, const double *counts, int64_t from, int64_t to,
                     double *dense, int64_t min, uint64_t n, double sign) {
    for (int64_t j = from; j < to; j++) {
        uint64_t at = (uint64_t)keys[j] - (uint64_t)min;
        if (at >= n) return -1;
        dense[at] += sign * counts[j];
    }
    return 0;
}

/* Adds item i's bins (sign 1) or takes them off (-1), with its sums (scan_group's): 0, or -1
 * where the bins are no longer what scan_group saw. */
static int add_item(const sg_windows *w, window *win, int64_t i, double sign,
                    const double *sums) {
    const int64_t *b = w->bounds + 2 * i;
    int64_t b0 = b[0], b1 = b[1], b2 = b[2];
    if (b0 < 0 || b1 < b0 || b2 < b1 || (uint64_t)b2 > w->nbins) return -1;
    if (add_store(w->keys, w->counts, b0, b1, win->pos, win->pos_min, win->n_pos, sign) < 0 ||
        add_store(w->keys, w->counts, b1, b2, win->neg, win->neg_min, win->n_neg, sign) < 0)
        return -1;
    win->pos_total += sign * sums[2 * i];
    win->neg_total += sign * sums[2 * i + 1];
    win->zero += sign * w->zero[i];
    return 0;
}

/* The least i with c[0] + … + c[i] >= t (n - 1 if none). Counts, total and t are integers and
 * every sum of counts exact, so it may as well be found from the top, where the counts above i
 * sum to at most total - t (the shorter walk for a high quantile), and four counts at a time. */
static uint64_t first_reaching(const double *c, uint64_t n, double total, double t) {
    if (n == 0) return 0;
    uint64_t i;
    if (t > total * 0.5) {
        double rest = total - t, above = 0.0;
        for (i = n - 1; i >= 4; i -= 4) {
            double four = (c[i] + c[i - 1]) + (c[i - 2] + c[i - 3]);
            if (above + four > rest) break;
            above += four;
        }
        while (i > 0 && above + c[i] <= rest) above += c[i--];
        return i;
    }
    double cum = 0.0;
    for (i = 0; i + 4 <= n; i += 4) {
        double four = (c[i] + c[i + 1]) + (c[i + 2] + c[i + 3]);
        if (cum + four >= t) break;
        cum += four;
    }
    for (; i < n; i++) {
        cum += c[i];
        if (cum >= t) return i;
    }
    return n - 1;
}

/* cell_quantiles' rank search on one window's counts (its arithmetic, step for step). */
static void rank_search(const window *win, double q, uint8_t *kind, int64_t *key) {
    double neg_total = win->neg_total, zero = win->zero, pos_total = win->pos_total;
    double total = neg_total + zero + pos_total;
    *kind = SG_W_NONE;
    *key = 0;
    if (total == 0.0) return;
    double rank = q * (total - 1.0);
    if (rank < neg_total) {
        /* Read from the top: the first cumulative count >= reversed rank + 1. */
        double t = ceil((neg_total - rank - 1.0) + 1.0);
        if (t < 1.0) t = 1.0;
        *kind = SG_W_NEG;
        *key = win->neg_min + (int64_t)first_reaching(win->neg, win->n_neg, neg_total, t);
    } else if (rank < zero + neg_total) {
        *kind = SG_W_ZERO;
    } else if (pos_total > 0.0) {
        /* The first cumulative count > rank - zero - neg_total, an integer: >= its floor + 1. */
        double t = floor(rank - zero - neg_total);
        if (t < 0.0) t = 0.0;
        *kind = SG_W_POS;
        *key = win->pos_min + (int64_t)first_reaching(win->pos, win->n_pos, pos_total, t + 1.0);
    } else if (zero <= 0.0) { /* no positive bins: unreachable with exact sums, kept as numpy */
        *kind = SG_W_NEG;
        *key = win->neg_min + (int64_t)first_reaching(win->neg, win->n_neg, neg_total, 1.0);
    } else {
        *kind = SG_W_ZERO;
    }
}

/* Group g's windows (its items e[0:m], sorted by cell, of the key ranges scan_group found)
 * into kind/key, with `scratch` for the dense counts (room enough). 0, or -1 where the inputs
 * changed while read. */
static int group_windows(const sg_windows *w, const entry *e, size_t m,
                         const key_range ranges[2], const double *sums, double *scratch,
                         uint8_t *kind, int64_t *key) {
    window win = {0};
    win.n_pos = width_of(&ranges[0]);
    win.n_neg = width_of(&ranges[1]);
    win.pos = scratch;
    win.neg = scratch + win.n_pos;
    win.pos_min = ranges[0].min;
    win.neg_min = ranges[1].min;
    memset(scratch, 0, (win.n_pos + win.n_neg) * sizeof *scratch);
    size_t in = 0, out = 0; /* the window holds items e[out:in] */
    for (size_t v = 0; v < w->n_windows; v++) {
        int64_t lo = w->lo[v], hi = w->hi[v];
        for (; out < in && e[out].cell < lo; out++) {
            if (add_item(w, &win, e[out].item, -1.0, sums) < 0) return -1;
        }
        if (out == in) { /* nothing held: skip what this window starts past */
            while (in < m && e[in].cell < lo) in++;
            out = in;
        }
        for (; in < m && e[in].cell < hi; in++) {
            if (add_item(w, &win, e[in].item, 1.0, sums) < 0) return -1;
        }
        rank_search(&win, w->q, &kind[v], &key[v]);
    }
    return 0;
}

/* Room for n doubles (at least one) in *scratch (of *cap): 0, or -1 where it cannot grow. */
static int reserve(double **scratch, uint64_t *cap, uint64_t n) {
    if (n == 0) n = 1;
    if (n <= *cap) return 0;
    if (n > SIZE_MAX / sizeof **scratch) return -1;
    double *p = realloc(*scratch, n * sizeof *p);
    if (!p) return -1;
    *scratch = p;
    *cap = n;
    return 0;
}

/* Group by group, the bins read from memory once: their ranges and checks (scan_group), then
 * the windows while they are still in the cache. Every rule for SG_W_INEXACT and SG_W_TOO_WIDE
 * is met once the last group is read (the widths only grow: the first group past the limit
 * says it); until then what was written to kind and key may be thrown away. -1: the inputs
 * changed while read. */
static int all_groups(const sg_windows *w, const entry *order, const size_t *start,
                      double *sums) {
    double *scratch = NULL, sum = 0.0;
    uint64_t cap = 0;
    key_range all[2] = {{0, 0, 0}, {0, 0, 0}};
    int r = SG_W_OK;
    for (int64_t g = 0; g < w->n_groups && r == SG_W_OK; g++) {
        const entry *e = order + start[g];
        size_t m = start[g + 1] - start[g], at = (size_t)g * w->n_windows;
        key_range ranges[2] = {{0, 0, 0}, {0, 0, 0}};
        if (!m) continue;
        if ((r = scan_group(w, e, m, ranges, sums, &sum)) != SG_W_OK) break;
        for (int s = 0; s < 2; s++) {
            if (ranges[s].any) widen(&all[s], ranges[s].min, ranges[s].max);
        }
        if (too_wide(w, width_of(&all[0]) + width_of(&all[1])))
            r = SG_W_TOO_WIDE;
        else if (!w->n_windows)
            continue; /* nothing to answer: the rules only */
        else if (reserve(&scratch, &cap, width_of(&ranges[0]) + width_of(&ranges[1])) < 0)
            r = SG_W_NOMEM;
        else
            r = group_windows(w, e, m, ranges, sums, scratch, w->kind + at, w->key + at);
    }
    free(scratch);
    /* Non-negative integers: a double sum reaches 2**53 exactly when the true sum does. */
    return r == SG_W_OK && sum >= SAFE_INT ? SG_W_INEXACT : r;
}

int sg_window_quantiles(sg_windows *w) {
    w->error = NULL;
    int r = check_inputs(w);
    if (r != SG_W_OK) return r;
    if (too_wide(w, 1)) return SG_W_TOO_WIDE;
    size_t cells = (size_t)w->n_groups * w->n_windows; /* the caller's arrays: no overflow */
    memset(w->kind, SG_W_NONE, cells);
    memset(w->key, 0, cells * sizeof *w->key);
    if (w->n > SIZE_MAX / sizeof(entry) - 1) return SG_W_NOMEM;
    entry *snap = malloc(w->n * sizeof *snap + 1), *order = malloc(w->n * sizeof *order + 1);
    size_t *start = calloc((size_t)w->n_groups + 1, sizeof *start);
    double *sums = malloc(w->n * 2 * sizeof *sums + 1);
    if (!snap || !order || !start || !sums)
        r = SG_W_NOMEM;
    else if (sort_items(w, snap, order, start) < 0)
        r = -1;
    else
        r = all_groups(w, order, start, sums);
    free(snap);
    free(order);
    free(start);
    free(sums);
    return r < 0 ? bad(w, "the inputs changed while they were read") : r;
}
