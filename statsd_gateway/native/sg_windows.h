/* Quantiles of sliding windows of cells in C: what sketch/_windows.py's numpy window_quantiles
 * does by laying every group's counts out densely over all cells, done per group with one
 * window's counts at a time (the Python module releases the GIL around it).
 *
 * Per group, its items sorted by cell; the window slides forward (the bins of the cells that
 * enter are added to a dense count per key over the group's key range, those of the cells that
 * leave are subtracted: exact, counts being integers whose sum stays below 2**53), and each
 * window runs cell_quantiles' rank search with the same double arithmetic.
 *
 * Contract (the reference is the numpy path; tests/test_windows_native.py holds the two to the
 * same answers, bit for bit):
 * - SG_W_OK: kind[g * n_windows + w] and key[…] say what quantile q of the merge of group g's
 *   items in cells [lo[w], hi[w]) is: SG_W_NONE (no count: NaN), SG_W_NEG (-value_of(key)),
 *   SG_W_ZERO (0.0) or SG_W_POS (value_of(key)); key is 0 where kind is neither.
 * - SG_W_INEXACT: a count or zero count is not an integer in [0, 2**53), or all of them sum to
 *   2**53 or more: the caller takes an exact path (what the numpy path answers None for).
 * - SG_W_TOO_WIDE: n_groups * (n_cells + n_windows) * max(positive width + negative width, 1)
 *   exceeds max_cost, a store's width being its largest key less its least plus one over every
 *   item (the numpy path's rule for None; here it also bounds the scratch memory).
 * - SG_W_BAD (`error` says why): inputs the numpy path's preconditions exclude: bounds that do
 *   not run from 0 to nbins without decreasing; a group or cell out of range; windows outside
 *   [0, n_cells], with lo > hi, or moving backwards; q outside [0, 1]; or an input that changed
 *   while it was read (another thread writing the arrays).
 * - SG_W_NOMEM: an allocation failed.
 * Memory: 48 bytes an item (its group and cell, their order, its stores' sums), a count per
 * group, and one dense count per key of the widest group's stores (fewer than max_cost).
 */
#ifndef SG_WINDOWS_H
#define SG_WINDOWS_H

#include <stddef.h>
#include <stdint.h>

enum { SG_W_OK = 0, SG_W_BAD = 1, SG_W_INEXACT = 2, SG_W_TOO_WIDE = 3, SG_W_NOMEM = 4 };
enum { SG_W_NONE = 0, SG_W_NEG = 1, SG_W_ZERO = 2, SG_W_POS = 3 };

typedef struct {
    /* sketch.FlatBins' arrays: store s of item i is keys/counts[bounds[2i+s]:bounds[2i+s+1]] */
    const int64_t *keys;
    const double *counts;
    size_t nbins;
    const int64_t *bounds; /* 2 * n + 1 */
    const double *zero;    /* n */
    size_t n;
    const int64_t *item_group, *item_cell; /* n each */
    int64_t n_groups, n_cells;
    const int64_t *lo, *hi; /* n_windows each */
    size_t n_windows;
    double q;
    uint64_t max_cost;
    /* what came out: n_groups * n_windows each (SG_W_OK) */
    uint8_t *kind;
    int64_t *key;
    const char *error; /* SG_W_BAD: why */
} sg_windows;

int sg_window_quantiles(sg_windows *w);

#ifdef Py_PYTHON_H
/* sg_windows_module.c: _native.window_quantiles, for sg_module.c's method table. */
PyObject *sg_py_window_quantiles(PyObject *m, PyObject *args);
#endif

#endif
