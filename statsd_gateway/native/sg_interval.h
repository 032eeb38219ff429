/* Shared by sg_module.c and sg_interval_module.c: a table's series-buckets as the entries
 * Python reads (accumulator.NativeEntry), and a swapped-out table held as a Python object. */
#ifndef SG_INTERVAL_H
#define SG_INTERVAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sg_core.h"

/* An iterable of ints -> a sorted int64 array (caller frees with PyMem_Free), or NULL with an
 * exception. */
int64_t *sg_sorted_sids(PyObject *iterable, size_t *n);

/* One series-bucket as an entry: (bucket, sid, count, sum, min, max, last|None, last_ts,
 * values|None, weights|None, members|None, seq). */
PyObject *sg_entry_of(const sg_acc *a);

/* The entries of table t (of the series `only`, sorted, unless it is NULL). `consume`: t is
 * freed or emptied next, so each entry's values are freed as soon as they are copied out. */
PyObject *sg_entries_of(sg_table *t, const int64_t *only, size_t nonly, int consume);

/* The set of series ids table t holds. */
PyObject *sg_table_sids(const sg_table *t);

/* A new _native.Interval owning t (freed with it), or NULL with an exception (t freed). */
PyObject *sg_interval_new(sg_table *t);

/* Adds the Interval type to the module: 0, or -1 with an exception. */
int sg_interval_ready(PyObject *m);

#endif
