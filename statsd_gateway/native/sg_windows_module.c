/* _native.window_quantiles: sg_windows.c for Python (sketch/_windows_native.py is its only user).
 *
 * window_quantiles(keys, counts, bounds, zero, item_group, item_cell, n_groups, n_cells, lo, hi,
 *                  q, max_cost, kind, key)
 * takes one-dimensional C-contiguous buffers: int64 keys, bounds, item_group, item_cell, lo,
 * hi and key, float64 counts and zero, uint8 kind; kind and key writable, of n_groups * len(lo)
 * elements each, which it fills (sg_windows.h says with what). The buffers are taken with the
 * GIL and read without it. Returns True (SG_W_OK) or None (SG_W_INEXACT, SG_W_TOO_WIDE: the
 * caller takes another path); raises ValueError for a buffer of another type or length, or
 * inputs sg_windows.c refuses (SG_W_BAD), MemoryError where an allocation failed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sg_windows.h"

enum { I64, F64, U8, NARRAYS = 10 };

/* a buffer of `type`'s elements, one-dimensional, C-contiguous (writable if asked): 0, or -1
 * with ValueError set (or what PyObject_GetBuffer raised) */
static int take(PyObject *obj, Py_buffer *view, int type, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int ok = view->ndim == 1 && f[0] && !f[1];
    if (type == I64) ok = ok && view->itemsize == 8 && (f[0] == 'l' || f[0] == 'q');
    if (type == F64) ok = ok && view->itemsize == 8 && f[0] == 'd';
    if (type == U8) ok = ok && view->itemsize == 1 && f[0] == 'B';
    if (!ok) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: not a one-dimensional array of %s", name,
                     type == I64 ? "int64" : type == F64 ? "float64" : "uint8");
        return -1;
    }
    return 0;
}

static size_t len_of(const Py_buffer *view) { return (size_t)(view->len / view->itemsize); }

PyObject *sg_py_window_quantiles(PyObject *m, PyObject *args) {
    static const char *names[NARRAYS] = {"keys", "counts", "bounds", "zero", "item_group",
                                         "item_cell", "lo", "hi", "kind", "key"};
    static const int types[NARRAYS] = {I64, F64, I64, F64, I64, I64, I64, I64, U8, I64};
    PyObject *objs[NARRAYS];
    long long n_groups, n_cells;
    unsigned long long max_cost;
    double q;
    if (!PyArg_ParseTuple(args, "OOOOOOLLOOdKOO", &objs[0], &objs[1], &objs[2], &objs[3],
                          &objs[4], &objs[5], &n_groups, &n_cells, &objs[6], &objs[7], &q,
                          &max_cost, &objs[8], &objs[9]))
        return NULL;
    Py_buffer views[NARRAYS];
    int got = 0;
    PyObject *out = NULL;
    for (; got < NARRAYS; got++) {
        if (take(objs[got], &views[got], types[got], got >= 8, names[got]) < 0) goto done;
    }
    size_t n = len_of(&views[3]), n_windows = len_of(&views[6]), cells;
    if (len_of(&views[1]) != len_of(&views[0]) || len_of(&views[2]) != 2 * n + 1 ||
        len_of(&views[4]) != n || len_of(&views[5]) != n || len_of(&views[7]) != n_windows) {
        PyErr_SetString(PyExc_ValueError, "the arrays' lengths do not match");
        goto done;
    }
    if (n_groups < 0 || n_cells < 0) {
        PyErr_SetString(PyExc_ValueError, "n_groups and n_cells must be >= 0");
        goto done;
    }
    if (__builtin_mul_overflow((size_t)n_groups, n_windows, &cells) ||
        len_of(&views[8]) != cells || len_of(&views[9]) != cells) {
        PyErr_SetString(PyExc_ValueError, "kind and key must have n_groups * len(lo) elements");
        goto done;
    }
    sg_windows w = {
        .keys = views[0].buf, .counts = views[1].buf, .nbins = len_of(&views[0]),
        .bounds = views[2].buf, .zero = views[3].buf, .n = n,
        .item_group = views[4].buf, .item_cell = views[5].buf,
        .n_groups = n_groups, .n_cells = n_cells,
        .lo = views[6].buf, .hi = views[7].buf, .n_windows = n_windows,
        .q = q, .max_cost = max_cost, .kind = views[8].buf, .key = views[9].buf,
    };
    int r;
    Py_BEGIN_ALLOW_THREADS;
    r = sg_window_quantiles(&w);
    Py_END_ALLOW_THREADS;
    if (r == SG_W_OK)
        out = Py_NewRef(Py_True);
    else if (r == SG_W_INEXACT || r == SG_W_TOO_WIDE)
        out = Py_NewRef(Py_None);
    else if (r == SG_W_NOMEM)
        PyErr_NoMemory();
    else
        PyErr_SetString(PyExc_ValueError, w.error);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&views[i]);
    return out;
}
