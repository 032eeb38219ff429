/* The relay: StatsD text as received -> UDP datagrams of at most packet_bytes to one peer, sent
 * by a thread of its own, with no Python (the reader threads hand it what they read without the
 * GIL).
 *
 * Contract (the reference is relay.py: pack_lines and PythonRelay; tests/test_relay_native.py
 * holds the two to the same packets and counts):
 * - A line is what lies between newlines, neither empty nor a lone "\r": the lines the parser
 *   counts, valid or not. It is sent exactly as received ("\r" included).
 * - sg_relay_append() takes datagrams (or TCP line batches) on any thread, GIL or not: it
 *   copies them into a buffer of at most buffer_bytes, or drops them whole and counts their
 *   lines (SG_RELAY_BUFFER_FULL; SG_RELAY_STOPPED once the sender has stopped). It never waits
 *   on the network, only on the buffer's mutex, which the sender holds to swap two pointers.
 * - Packing (sg_relay_next_packet): the lines in order, joined by "\n" (none after the last),
 *   as many as fit in packet_bytes; a line longer than packet_bytes goes alone.
 * - The sender thread sends what is buffered every `period` seconds, and at once when
 *   ready_bytes are buffered, on a non-blocking socket: a full socket buffer is waited for, up
 *   to SG_RELAY_WAIT seconds a round. A failed send is counted by errno and its packet's lines
 *   dropped (SG_RELAY_SEND_ERROR); ECONNREFUSED (the peer's ICMP answer to an earlier packet,
 *   reported on this send, which it kept from going out) is retried once first.
 * - sg_relay_stop() makes the sender send everything buffered, then end.
 */
#ifndef SG_RELAY_H
#define SG_RELAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Why lines were dropped, in relay.py's DROP_REASONS order. */
enum sg_relay_drop { SG_RELAY_BUFFER_FULL, SG_RELAY_SEND_ERROR, SG_RELAY_STOPPED, SG_RELAY_NDROPS };

/* Failed sends are counted by errno below this (any larger one under 0). */
#define SG_RELAY_NERRNO 256
/* Packets sent by one sendmmsg() call at most. */
#define SG_RELAY_BATCH 64
/* Seconds one send round waits, in all, for room in a full socket buffer (relay.SEND_WAIT). */
#define SG_RELAY_WAIT 1.0

typedef struct {
    uint64_t lines, packets, bytes;
    uint64_t dropped[SG_RELAY_NDROPS];
    uint64_t errors[SG_RELAY_NERRNO];
} sg_relay_counts;

typedef struct sg_relay {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* on CLOCK_MONOTONIC */
    /* under lock */
    char *buf; /* what was appended since the last swap, each datagram ending in "\n" */
    size_t len;
    int stopping, stopped;
    /* set at creation */
    int fd;
    size_t packet_bytes, buffer_bytes, ready_bytes;
    double period;
    /* the sender's own */
    char *take;    /* the buffer swapped out, being sent */
    char *scratch; /* SG_RELAY_BATCH packets of packet_bytes */
    pthread_t thread;
    int started;
    atomic_int alive;
    _Atomic uint64_t lines, packets, bytes;
    _Atomic uint64_t dropped[SG_RELAY_NDROPS];
    _Atomic uint64_t errors[SG_RELAY_NERRNO];
} sg_relay;

/* A relay sending on `fd` (a connected UDP socket the caller keeps open until sg_relay_free).
 * NULL if out of memory. */
sg_relay *sg_relay_new(int fd, size_t packet_bytes, size_t buffer_bytes, size_t ready_bytes,
                       double period);
/* Starts the sender thread: 0, or an errno. */
int sg_relay_start(sg_relay *r);
/* Copies n datagrams in, or drops each that does not fit (see the contract). */
void sg_relay_append(sg_relay *r, const struct iovec *parts, size_t n);
/* Sends what is buffered and ends the sender (waits for it); appends from then on are dropped.
 * Safe to call more than once, and on a relay never started. */
void sg_relay_stop(sg_relay *r);
void sg_relay_free(sg_relay *r);
void sg_relay_get_counts(sg_relay *r, sg_relay_counts *out);
/* 1 while the sender thread runs. */
int sg_relay_alive(sg_relay *r);

/* The lines of data[0..len) the contract counts. */
size_t sg_relay_count_lines(const char *data, size_t len);
/* The next packet of the lines from *p to end: written to `out` (packet_bytes bytes), or, for a
 * line longer than packet_bytes, pointed to where it lies. Advances *p past what it took and
 * returns how many lines the packet holds: 0 when no line is left. */
size_t sg_relay_next_packet(const char **p, const char *end, size_t packet_bytes, char *out,
                            const char **packet, size_t *packet_len);

#ifdef Py_PYTHON_H
/* sg_relay_module.c: the Relay type and relay_pack() for sg_module.c's module init (0, or -1
 * with an exception set); the sg_relay of a Relay object (NULL with TypeError for anything
 * else), for Core.set_relay. */
int sg_relay_ready(PyObject *m);
sg_relay *sg_relay_of(PyObject *obj);
PyObject *sg_py_relay_pack(PyObject *m, PyObject *args);
#endif

#endif
