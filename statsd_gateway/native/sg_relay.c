/* The relay (see sg_relay.h for the contract): a bounded buffer that any thread appends to, and
 * a sender thread that packs it into datagrams and sends them with sendmmsg(). */
#define _GNU_SOURCE
#include "sg_relay.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

size_t sg_relay_count_lines(const char *data, size_t len) {
    size_t n = 0;
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t k = (size_t)((nl ? nl : end) - p);
        if (k && !(k == 1 && p[0] == '\r')) n++;
        if (!nl) break;
        p = nl + 1;
    }
    return n;
}

size_t sg_relay_next_packet(const char **p, const char *end, size_t packet_bytes, char *out,
                            const char **packet, size_t *packet_len) {
    const char *s = *p;
    size_t lines = 0, used = 0;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = (size_t)((nl ? nl : end) - s);
        const char *next = nl ? nl + 1 : end;
        if (!n || (n == 1 && s[0] == '\r')) { /* not a line */
            s = next;
            continue;
        }
        if (n > packet_bytes) {
            if (lines) break; /* the packet so far goes first; this line alone after it */
            *p = next;
            *packet = s;
            *packet_len = n;
            return 1;
        }
        if (used + n + (lines ? 1 : 0) > packet_bytes) break;
        if (lines) out[used++] = '\n';
        memcpy(out + used, s, n);
        used += n;
        lines++;
        s = next;
    }
    *p = s;
    *packet = out;
    *packet_len = used;
    return lines;
}

sg_relay *sg_relay_new(int fd, size_t packet_bytes, size_t buffer_bytes, size_t ready_bytes,
                       double period) {
    sg_relay *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    /* Both buffers at their bound now, so an append never reallocates under the mutex; the
     * pages are touched only as far as traffic fills them. */
    r->buf = malloc(buffer_bytes ? buffer_bytes : 1);
    r->take = malloc(buffer_bytes ? buffer_bytes : 1);
    r->scratch = malloc(SG_RELAY_BATCH * (packet_bytes ? packet_bytes : 1));
    if (!r->buf || !r->take || !r->scratch) {
        free(r->buf);
        free(r->take);
        free(r->scratch);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    /* The period is measured on the monotonic clock: a step of the wall clock moves no send. */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &attr);
    pthread_condattr_destroy(&attr);
    r->fd = fd;
    r->packet_bytes = packet_bytes;
    r->buffer_bytes = buffer_bytes;
    r->ready_bytes = ready_bytes;
    r->period = period;
    return r;
}

void sg_relay_append(sg_relay *r, const struct iovec *parts, size_t n) {
    int wake = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < n; i++) {
        const char *data = parts[i].iov_base;
        size_t len = parts[i].iov_len;
        if (!len) continue;
        size_t need = len + (data[len - 1] != '\n');
        int why = r->stopped                           ? SG_RELAY_STOPPED
                  : r->len + need > r->buffer_bytes ? SG_RELAY_BUFFER_FULL
                                                    : -1;
        if (why >= 0) {
            atomic_fetch_add(&r->dropped[why], sg_relay_count_lines(data, len));
            continue;
        }
        memcpy(r->buf + r->len, data, len);
        if (need > len) r->buf[r->len + len] = '\n';
        /* Wake the sender once, when the buffer reaches ready_bytes (not at every append). */
        wake |= r->len < r->ready_bytes && r->len + need >= r->ready_bytes;
        r->len += need;
    }
    pthread_mutex_unlock(&r->lock);
    if (wake) pthread_cond_signal(&r->wake);
}

static void count_error(sg_relay *r, int err) {
    atomic_fetch_add(&r->errors[err > 0 && err < SG_RELAY_NERRNO ? err : 0], 1);
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static struct timespec after(double seconds) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    double whole = (double)(time_t)seconds;
    t.tv_sec += (time_t)seconds;
    t.tv_nsec += (long)((seconds - whole) * 1e9);
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* The socket's buffer is full: waits for room until `deadline`; 1 if there is room now. */
static int wait_for_room(int fd, const struct timespec *deadline) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!before(&now, deadline)) return 0;
    long ms = (long)(deadline->tv_sec - now.tv_sec) * 1000 +
              (deadline->tv_nsec - now.tv_nsec) / 1000000 + 1;
    struct pollfd p = {fd, POLLOUT, 0};
    int got = poll(&p, 1, (int)ms);
    return got > 0 || (got < 0 && errno == EINTR);
}

/* Sends n packets (lines[i] lines in msgs[i]), each at most twice (see ECONNREFUSED above). */
static void send_batch(sg_relay *r, struct mmsghdr *msgs, const size_t *lines, int n,
                       const struct timespec *deadline) {
    int i = 0, retried = 0;
    while (i < n) {
        int sent = sendmmsg(r->fd, msgs + i, (unsigned)(n - i), 0);
        if (sent > 0) {
            uint64_t nlines = 0, nbytes = 0;
            for (int k = i; k < i + sent; k++) {
                nlines += lines[k];
                nbytes += msgs[k].msg_hdr.msg_iov->iov_len;
            }
            atomic_fetch_add(&r->lines, nlines);
            atomic_fetch_add(&r->bytes, nbytes);
            atomic_fetch_add(&r->packets, (uint64_t)sent);
            i += sent;
            retried = 0;
            continue;
        }
        /* sendmmsg() reports an error only when the first packet failed: that is msgs[i]. */
        int err = sent < 0 ? errno : EIO;
        if (err == EINTR) continue;
        if ((err == EAGAIN || err == EWOULDBLOCK) && wait_for_room(r->fd, deadline)) continue;
        count_error(r, err);
        if (err == ECONNREFUSED && !retried) {
            retried = 1;
            continue;
        }
        atomic_fetch_add(&r->dropped[SG_RELAY_SEND_ERROR], lines[i]);
        i++;
        retried = 0;
    }
}

/* One round: everything swapped out. The socket does not block; a full socket buffer is waited
 * for, SG_RELAY_WAIT seconds at most in the whole round, so that a stop always ends soon. */
static void send_all(sg_relay *r, const char *data, size_t len) {
    struct timespec deadline = after(SG_RELAY_WAIT);
    struct mmsghdr msgs[SG_RELAY_BATCH];
    struct iovec iovs[SG_RELAY_BATCH];
    size_t lines[SG_RELAY_BATCH];
    const char *p = data, *end = data + len;
    for (;;) {
        int n = 0;
        while (n < SG_RELAY_BATCH) {
            const char *packet;
            size_t plen;
            size_t k = sg_relay_next_packet(&p, end, r->packet_bytes,
                                            r->scratch + (size_t)n * r->packet_bytes, &packet,
                                            &plen);
            if (!k) break;
            iovs[n].iov_base = (void *)packet;
            iovs[n].iov_len = plen;
            memset(&msgs[n], 0, sizeof msgs[n]);
            msgs[n].msg_hdr.msg_iov = &iovs[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            lines[n++] = k;
        }
        if (!n) return;
        send_batch(r, msgs, lines, n, &deadline);
    }
}

/* Swaps the buffer out under the mutex; returns its length (the data is in r->take). Called
 * with the mutex held; the last swap (stopping) also marks the relay stopped, so that nothing
 * appended after it is left unsent without being counted. */
static size_t swap_locked(sg_relay *r) {
    if (r->stopping) r->stopped = 1;
    char *full = r->buf;
    size_t len = r->len;
    r->buf = r->take;
    r->take = full;
    r->len = 0;
    return len;
}

static void *sender_main(void *arg) {
    sg_relay *r = arg;
    struct timespec tick = after(r->period), now;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->stopping && r->len < r->ready_bytes) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (!before(&now, &tick)) break;
            pthread_cond_timedwait(&r->wake, &r->lock, &tick);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!before(&now, &tick)) tick = after(r->period);
        int last = r->stopping;
        size_t len = swap_locked(r);
        pthread_mutex_unlock(&r->lock);
        if (len) send_all(r, r->take, len);
        if (last) break;
        pthread_mutex_lock(&r->lock);
    }
    atomic_store(&r->alive, 0);
    return NULL;
}

int sg_relay_start(sg_relay *r) {
    if (r->started) return EALREADY;
    atomic_store(&r->alive, 1);
    int err = pthread_create(&r->thread, NULL, sender_main, r);
    if (err) {
        atomic_store(&r->alive, 0);
        return err;
    }
    /* So that `top -H` and `ps -L` show it (15 characters at most). */
    pthread_setname_np(r->thread, "sgw-relay");
    r->started = 1;
    return 0;
}

void sg_relay_stop(sg_relay *r) {
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    if (!r->started) { /* no sender: what was appended is sent here */
        size_t len = swap_locked(r);
        pthread_mutex_unlock(&r->lock);
        if (len) send_all(r, r->take, len);
        return;
    }
    pthread_mutex_unlock(&r->lock);
    pthread_cond_signal(&r->wake);
    pthread_join(r->thread, NULL);
    r->started = 0;
}

void sg_relay_free(sg_relay *r) {
    if (!r) return;
    sg_relay_stop(r);
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r->buf);
    free(r->take);
    free(r->scratch);
    free(r);
}

void sg_relay_get_counts(sg_relay *r, sg_relay_counts *out) {
    out->lines = atomic_load(&r->lines);
    out->packets = atomic_load(&r->packets);
    out->bytes = atomic_load(&r->bytes);
    for (int i = 0; i < SG_RELAY_NDROPS; i++) out->dropped[i] = atomic_load(&r->dropped[i]);
    for (int i = 0; i < SG_RELAY_NERRNO; i++) out->errors[i] = atomic_load(&r->errors[i]);
}

int sg_relay_alive(sg_relay *r) { return atomic_load(&r->alive); }
