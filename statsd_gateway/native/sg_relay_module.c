/* _native.Relay and _native.relay_pack: sg_relay.c for Python (native_relay.py is the Relay's
 * only user; relay_pack is the packing rule, for the tests that hold it to relay.pack_lines).
 *
 * Relay(fd, packet_bytes, buffer_bytes, ready_bytes, period): a relay sending on a duplicate of
 * `fd`, a connected non-blocking UDP socket (its own: whenever the caller closes its socket, the
 * sender never writes to a descriptor number reused meanwhile). start() starts its sender
 * thread; Core.set_relay(relay) makes a core hand it every datagram it parses (its reader thread
 * without the GIL); stop() sends what is buffered and ends the thread, with the GIL let go.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <unistd.h>

#include "sg_relay.h"

typedef struct {
    PyObject_HEAD
    sg_relay *r;
    int fd; /* the relay's own duplicate of the socket */
    int joining; /* stop() waits for the sender (GIL let go): a second stop() returns at once */
    PyObject *weakrefs;
} RelayObject;

static PyTypeObject RelayType;

sg_relay *sg_relay_of(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &RelayType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Relay");
        return NULL;
    }
    return ((RelayObject *)obj)->r;
}

static PyObject *Relay_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *names[] = {"fd", "packet_bytes", "buffer_bytes", "ready_bytes", "period", NULL};
    int fd;
    Py_ssize_t packet_bytes, buffer_bytes, ready_bytes;
    double period;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "innnd", names, &fd, &packet_bytes,
                                     &buffer_bytes, &ready_bytes, &period))
        return NULL;
    if (fd < 0 || packet_bytes < 1 || buffer_bytes < 1 || ready_bytes < 1 ||
        !(period > 0 && period < 1e6)) {
        PyErr_SetString(PyExc_ValueError,
                        "fd >= 0, bytes >= 1 and a period of more than 0 (and under 1e6) s");
        return NULL;
    }
    RelayObject *self = (RelayObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (self->fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->r = sg_relay_new(self->fd, (size_t)packet_bytes, (size_t)buffer_bytes,
                           (size_t)ready_bytes, period);
    if (!self->r) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Relay_dealloc(RelayObject *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->r) {
        Py_BEGIN_ALLOW_THREADS sg_relay_free(self->r);
        Py_END_ALLOW_THREADS
    }
    if (self->fd >= 0) close(self->fd); /* after the sender's last send */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Relay_start(RelayObject *self, PyObject *unused) {
    int err = sg_relay_start(self->r);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Relay_stop(RelayObject *self, PyObject *unused) {
    if (self->joining) Py_RETURN_NONE;
    self->joining = 1;
    Py_BEGIN_ALLOW_THREADS sg_relay_stop(self->r);
    Py_END_ALLOW_THREADS self->joining = 0;
    Py_RETURN_NONE;
}

static PyObject *Relay_append(RelayObject *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    struct iovec part = {data.buf, (size_t)data.len};
    sg_relay_append(self->r, &part, 1);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyObject *Relay_counts(RelayObject *self, PyObject *unused) {
    sg_relay_counts c;
    sg_relay_get_counts(self->r, &c);
    PyObject *dropped = PyTuple_New(SG_RELAY_NDROPS), *errors = PyDict_New();
    for (int i = 0; dropped && i < SG_RELAY_NDROPS; i++)
        PyTuple_SET_ITEM(dropped, i, PyLong_FromUnsignedLongLong(c.dropped[i]));
    for (int i = 0; errors && i < SG_RELAY_NERRNO; i++) {
        if (!c.errors[i]) continue;
        PyObject *k = PyLong_FromLong(i), *v = PyLong_FromUnsignedLongLong(c.errors[i]);
        if (!k || !v || PyDict_SetItem(errors, k, v) < 0) Py_CLEAR(errors);
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    if (!dropped || !errors) {
        Py_XDECREF(dropped);
        Py_XDECREF(errors);
        return NULL;
    }
    return Py_BuildValue("(KKKNN)", (unsigned long long)c.lines, (unsigned long long)c.packets,
                         (unsigned long long)c.bytes, dropped, errors);
}

static PyObject *Relay_running(RelayObject *self, void *closure) {
    return PyBool_FromLong(sg_relay_alive(self->r));
}

static PyMethodDef Relay_methods[] = {
    {"start", (PyCFunction)Relay_start, METH_NOARGS, "Starts the sender thread."},
    {"stop", (PyCFunction)Relay_stop, METH_NOARGS,
     "Sends what is buffered and ends the sender thread; later appends are dropped."},
    {"append", (PyCFunction)Relay_append, METH_O,
     "append(data): one datagram (or TCP line batch) as received."},
    {"counts", (PyCFunction)Relay_counts, METH_NOARGS,
     "(lines, packets, bytes, (dropped by reason), {errno: failed sends})."},
    {NULL}};

static PyGetSetDef Relay_getset[] = {
    {"running", (getter)Relay_running, NULL, "Whether the sender thread runs.", NULL}, {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "statsd_gateway._native.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_weaklistoffset = offsetof(RelayObject, weakrefs),
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relay(fd, packet_bytes, buffer_bytes, ready_bytes, period): StatsD lines to a peer.",
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
    .tp_new = Relay_new,
};

/* relay_pack(data, packet_bytes): [(packet, lines)] as the sender packs data. */
PyObject *sg_py_relay_pack(PyObject *m, PyObject *args) {
    Py_buffer data;
    Py_ssize_t packet_bytes;
    if (!PyArg_ParseTuple(args, "y*n", &data, &packet_bytes)) return NULL;
    PyObject *out = packet_bytes >= 1 ? PyList_New(0) : NULL;
    char *scratch = out ? PyMem_Malloc((size_t)packet_bytes) : NULL;
    if (!out || !scratch) {
        if (packet_bytes < 1) PyErr_SetString(PyExc_ValueError, "packet_bytes >= 1");
        else if (!scratch) PyErr_NoMemory();
        Py_XDECREF(out);
        PyBuffer_Release(&data);
        return NULL;
    }
    const char *p = data.buf, *end = p + data.len, *packet;
    size_t len, lines;
    while ((lines = sg_relay_next_packet(&p, end, (size_t)packet_bytes, scratch, &packet, &len))) {
        PyObject *item = Py_BuildValue("(y#n)", packet, (Py_ssize_t)len, (Py_ssize_t)lines);
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(item);
    }
    PyMem_Free(scratch);
    PyBuffer_Release(&data);
    return out;
}

int sg_relay_ready(PyObject *m) {
    if (PyType_Ready(&RelayType) < 0) return -1;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        return -1;
    }
    return PyModule_AddIntConstant(m, "RELAY_DROPS", SG_RELAY_NDROPS);
}
