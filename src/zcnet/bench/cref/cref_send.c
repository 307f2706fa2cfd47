/* zcnet bench C reference sender: the same sends as the Python send modes, from C.
 *
 * Usage: cref_send FD copy|zc|uring|uring-fixed|uring-fixed-linked|uring-single|uring-fixed-single
 *        tcp|udp MSG WARMUP NBYTES SOURCE_BYTES
 *        < pattern-period
 *
 * FD is a connected socket set up by the Python side (TCP: the benchmark header is already
 * sent, so the receiver sees the benchmark's own wire protocol; UDP: UDP_SEGMENT already set
 * for GSO sends, tools/testing/selftests/net/udpgso_bench_tx.c). stdin holds one period of the
 * stream pattern (zcnet._core.pattern): stream byte i is pattern[i % period]. The messages walk
 * through a buffer of about SOURCE_BYTES (a whole number of periods; one period when
 * SOURCE_BYTES is at most 4 MiB, the Python senders' hot buffer), as zcnet.bench.pattern.Source.
 * The buffer is never written once filled, so a message may be sent again while an earlier
 * send of the same bytes is still in flight.
 *
 * Sends WARMUP bytes untimed, then NBYTES inside a getrusage(RUSAGE_SELF) window that, for the
 * zero-copy modes, ends after the last completion arrived. zc: SO_ZEROCOPY and
 * send(MSG_ZEROCOPY), the error queue read every 32 sends and, on ENOBUFS (optmem full of
 * pending notifications), polled and drained before retrying
 * (Documentation/networking/msg_zerocopy.rst, tools/testing/selftests/net/msg_zerocopy.c).
 * uring, uring-fixed: io_uring IORING_OP_SEND_ZC, BATCH sends per io_uring_enter (see "io_uring"
 * below); uring-fixed sends from the buffer registered once with IORING_REGISTER_BUFFERS;
 * uring-fixed-linked also links each batch's UDP sends (IOSQE_IO_LINK, as TCP's always are),
 * so a datagram the kernel must wait for (a full send buffer) holds back the ones after it, as
 * an ordered sender needs. uring-single and uring-fixed-single: uring and uring-fixed with one
 * send per io_uring_enter, as a program sending one message per call (zcnet's Sender.send).
 * Prints one JSON line: {"ok": true, ...}; {"ok": false, "error": ...} (exit 1) on failure;
 * {"ok": false, "unavailable": REASON} (exit 3) when io_uring or SEND_ZC cannot be used here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h> /* before linux/errqueue.h (struct timespec) */
#include <linux/errqueue.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>
#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#define HAVE_URING 1
#endif
#endif

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif

#define PERIOD 65521L
#define HOT_SPAN (4L << 20)
#define EXIT_UNAVAILABLE 3

static int fd, udp;
static int zc, uring, fixed, linked;
static int per_enter = 32; /* io_uring: messages queued before a submission (BATCH, or 1) */
/* zero-copy sends made, notifications received, those saying "copied", back-pressure retries */
static long long calls, done, copied, enobufs;

static void die(const char *what) {
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, strerror(errno));
    exit(1);
}

/* This mode cannot run here (no io_uring, no SEND_ZC, ...): the Python side says why. */
static void unavailable(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("{\"ok\": false, \"unavailable\": \"");
    vprintf(fmt, ap);
    printf("\"}\n");
    va_end(ap);
    exit(EXIT_UNAVAILABLE);
}

/* Read every notification queued on the error queue; each covers the send calls lo..hi. */
static void reap(int wait) {
    if (wait) {
        struct pollfd p = {.fd = fd, .events = 0};
        poll(&p, 1, 100); /* POLLERR is always reported */
    }
    for (;;) {
        char control[128];
        struct msghdr msg = {.msg_control = control, .msg_controllen = sizeof(control)};
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            die("recvmsg(MSG_ERRQUEUE)");
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            struct sock_extended_err *ee = (struct sock_extended_err *)CMSG_DATA(c);
            if (ee->ee_errno != 0 || ee->ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
            long long n = (long long)((ee->ee_data - ee->ee_info) & 0xFFFFFFFFu) + 1;
            done += n;
            if (ee->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) copied += n;
        }
    }
}

#ifdef HAVE_URING
/* ---- io_uring: IORING_OP_SEND_ZC (Linux 6.0) with raw system calls, no liburing ----
 * Facts from include/uapi/linux/io_uring.h, io_uring/net.c (io_send_zc) and io_uring/notif.c:
 * - a SEND_ZC request posts a result CQE (res: bytes sent, or -errno); when that CQE has
 *   IORING_CQE_F_MORE, a second CQE with IORING_CQE_F_NOTIF and the same user_data follows once
 *   the kernel no longer uses the pages (the buffer may be rewritten then), even when res < 0;
 * - IORING_SEND_ZC_REPORT_USAGE (sqe->ioprio, Linux 6.2) sets IORING_NOTIF_USAGE_ZC_COPIED in
 *   the notification's res when the data was copied after all (or zero-copy was not used);
 * - IORING_RECVSEND_FIXED_BUF: sqe->addr lies in registered buffer sqe->buf_index, whose pages
 *   were pinned once by IORING_REGISTER_BUFFERS instead of at every send;
 * - a full send buffer is back-pressure io_uring handles itself (poll, then retry), and with
 *   MSG_WAITALL a short TCP send is continued by the kernel; a send that still ends short
 *   (an error after some bytes: res is the bytes sent) fails the rest of its IOSQE_IO_LINK
 *   chain with -ECANCELED;
 * - without CAP_IPC_LOCK the pages of a send from an unregistered buffer are charged to
 *   RLIMIT_MEMLOCK from its submission to its notification: -ENOMEM is back-pressure while
 *   sends are in flight, and a chain over the limit by itself fails at submission (the sends
 *   before the one refused then end -ECANCELED, and notifications can come for sends whose
 *   result CQE had no IORING_CQE_F_MORE: notifications are matched to their sends by
 *   user_data; those of failed sends are awaited but not counted).
 * The rings are mapped as io_uring_setup(2) describes. We publish the SQ tail and the CQ head
 * with release stores and read the CQ tail the kernel writes with an acquire load; the SQ head
 * is not needed, as every batch is consumed by io_uring_enter before the next is written. */
#define BATCH 32        /* SQEs per io_uring_enter (the SQ ring's size) */
#define CQ_ENTRIES 1024 /* room for a batch's results and every notification in flight */
#define MAX_NOTIFS 512  /* notifications outstanding before the next batch waits for some */
#define SLOTS 4096      /* user_data: send number << 8 | index in q; notifications by number */
#ifndef IORING_RECVSEND_FIXED_BUF
#define IORING_RECVSEND_FIXED_BUF (1U << 2)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifdef IORING_CQE_F_NOTIF /* came with IORING_OP_SEND_ZC (an enum value, not a macro) */
#define OP_SEND_ZC IORING_OP_SEND_ZC
#else
#define IORING_CQE_F_NOTIF (1U << 3)
#define OP_SEND_ZC 47
#endif

static struct {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
} ring;
static struct { const char *p; unsigned len; int res; } q[BATCH]; /* the batch to send */
static int nq, pending;    /* messages in q; result CQEs not yet received */
static int cap = BATCH;    /* sends per submission: halved if a batch alone exceeds MEMLOCK */
static unsigned long long seq;           /* sends submitted */
static unsigned char due[SLOTS][2];      /* notifications promised, by send number % SLOTS,
                                            for sends that failed [0] or sent bytes [1] */
static long long due_failed;             /* notifications of failed sends still to come */
static long long full_sends;

static void *ring_map(size_t len, off_t off) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring.fd, off);
    if (p == MAP_FAILED) die("mmap(io_uring)");
    return p;
}

static void uring_init(char *buf, size_t len) {
    /* SUBMIT_ALL (5.18): a failed SQE does not stop the submission of those behind it */
    struct io_uring_params p = {.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL,
                                .cq_entries = CQ_ENTRIES};
    ring.fd = (int)syscall(__NR_io_uring_setup, BATCH, &p);
    if (ring.fd < 0) {
        int e = errno, disabled = 0;
        FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
        if (f && fscanf(f, "%d", &disabled) != 1) disabled = 0;
        if (f) fclose(f);
        unavailable("io_uring_setup: %s%s", strerror(e),
                    e == ENOSYS ? " (a kernel without io_uring)"
                    : e == EPERM && disabled ? " (sysctl kernel.io_uring_disabled)"
                    : e == EPERM ? " (a seccomp filter?)"
                    : e == EINVAL ? " (Linux before 5.18?)" : "");
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && cq_len > sq_len) sq_len = cq_len;
    char *sq = ring_map(sq_len, IORING_OFF_SQ_RING);
    char *cq = single ? sq : ring_map(cq_len, IORING_OFF_CQ_RING);
    ring.sq_tail = (unsigned *)(sq + p.sq_off.tail);
    ring.sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    ring.sq_array = (unsigned *)(sq + p.sq_off.array);
    ring.cq_head = (unsigned *)(cq + p.cq_off.head);
    ring.cq_tail = (unsigned *)(cq + p.cq_off.tail);
    ring.cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    ring.sqes = ring_map(p.sq_entries * sizeof(struct io_uring_sqe), IORING_OFF_SQES);

    size_t plen = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, plen);
    if (!probe) die("calloc");
    if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_PROBE, probe, 256) < 0)
        unavailable("IORING_REGISTER_PROBE: %s", strerror(errno));
    if (probe->ops_len <= OP_SEND_ZC || !(probe->ops[OP_SEND_ZC].flags & IO_URING_OP_SUPPORTED))
        unavailable("IORING_OP_SEND_ZC is not supported by this kernel (Linux 6.0+)");
    free(probe);
    if (fixed) { /* one iovec: the whole source buffer, pinned once */
        struct iovec iov = {.iov_base = buf, .iov_len = len};
        if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
            unavailable("IORING_REGISTER_BUFFERS of %zu bytes: %s%s", len, strerror(errno),
                        errno == ENOMEM ? " (RLIMIT_MEMLOCK?)" : "");
    }
}

/* Take the CQEs there are: results into q, promised notifications counted (a notification
 * comes after its send's result). */
static void uring_reap(void) {
    unsigned head = *ring.cq_head; /* only we write it */
    unsigned tail = __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
        struct io_uring_cqe *c = &ring.cqes[head & *ring.cq_mask];
        unsigned char *d = due[(c->user_data >> 8) % SLOTS];
        if (c->flags & IORING_CQE_F_NOTIF) {
            if (d[1]) {
                d[1]--;
                done++;
                if ((unsigned)c->res & IORING_NOTIF_USAGE_ZC_COPIED) copied++;
            } else if (d[0]) {
                d[0]--;
                due_failed--;
            }
            continue;
        }
        q[c->user_data & 0xff].res = c->res;
        pending--;
        if (c->flags & IORING_CQE_F_MORE) { /* a notification will follow */
            d[c->res > 0]++;
            if (c->res > 0) calls++;
            else due_failed++;
        }
    }
    __atomic_store_n(ring.cq_head, head, __ATOMIC_RELEASE);
}

/* Submit `submit` queued SQEs, wait until `wait` CQEs are there, take them. */
static void uring_enter(unsigned submit, unsigned wait) {
    for (;;) {
        long k = syscall(__NR_io_uring_enter, ring.fd, submit, wait,
                         wait ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
        if (k >= 0) {
            submit -= (unsigned)k; /* whatever was not consumed stays queued in the SQ ring */
            if (!submit) break;
            continue;
        }
        if (errno != EINTR && errno != EAGAIN && errno != EBUSY) die("io_uring_enter");
        uring_reap(); /* EBUSY: completions to take first */
    }
    uring_reap();
}

static void uring_error(int res) {
    const char *why = res == -EINVAL ? " (IORING_SEND_ZC_REPORT_USAGE needs Linux 6.2+)"
                      : res == -ENOMEM ? " (one send's pages exceed RLIMIT_MEMLOCK)" : "";
    if (!full_sends && (res == -EINVAL || res == -EOPNOTSUPP || res == -ENOMEM))
        unavailable("IORING_OP_SEND_ZC refused the first send: %s%s", strerror(-res), why);
    printf("{\"ok\": false, \"error\": \"IORING_OP_SEND_ZC: %s%s\"}\n", strerror(-res), why);
    exit(1);
}

/* Send the messages in q, up to `cap` per io_uring_enter (TCP: one IOSQE_IO_LINK chain with
 * MSG_WAITALL, so the stream keeps its order), waiting for every result; what did not go is
 * sent again first: the rest of a short send and the chain cancelled behind it, or sends
 * refused for back-pressure (-ENOBUFS, -EAGAIN, -ENOMEM) once a notification came back. */
static void uring_flush(void) {
    while (nq > 0) {
        while (calls - done + due_failed + nq > MAX_NOTIFS) uring_enter(0, 1);
        int n = nq < cap ? nq : cap;
        unsigned tail = *ring.sq_tail; /* only we write it */
        for (int i = 0; i < n; i++) {
            unsigned idx = (tail + (unsigned)i) & *ring.sq_mask;
            struct io_uring_sqe *s = &ring.sqes[idx];
            memset(s, 0, sizeof(*s));
            s->opcode = OP_SEND_ZC;
            s->fd = fd;
            s->addr = (uintptr_t)q[i].p;
            s->len = q[i].len;
            s->msg_flags = MSG_NOSIGNAL | (udp ? 0 : MSG_WAITALL); /* errors in res */
            s->flags = (!udp || linked) && i < n - 1 ? IOSQE_IO_LINK : 0;
            s->ioprio = IORING_SEND_ZC_REPORT_USAGE | (fixed ? IORING_RECVSEND_FIXED_BUF : 0);
            s->buf_index = 0;
            s->user_data = seq++ << 8 | (unsigned)i;
            ring.sq_array[idx] = idx;
        }
        __atomic_store_n(ring.sq_tail, tail + (unsigned)n, __ATOMIC_RELEASE);
        long long in_flight = calls - done + due_failed;
        pending = n;
        uring_enter((unsigned)n, (unsigned)n);
        while (pending > 0) uring_enter(0, 1);
        int keep = 0, backoff = 0, progress = 0, nomem = 0;
        for (int i = 0; i < n; i++) {
            int res = q[i].res;
            progress |= res > 0;
            if (res == (int)q[i].len) {
                full_sends++;
                continue;
            }
            if (res >= 0 && !udp) { /* short TCP send: its rest goes first next time */
                q[i].p += res;
                q[i].len -= (unsigned)res;
            } else if (res == -ENOBUFS || res == -EAGAIN || res == -EINTR || res == -ENOMEM) {
                enobufs++;
                backoff = 1;
                nomem |= res == -ENOMEM;
            } else if (res != -ECANCELED) {
                uring_error(res >= 0 ? -EMSGSIZE : res); /* a datagram goes whole or not */
            }
            q[keep++] = q[i];
        }
        memmove(q + keep, q + n, (size_t)(nq - n) * sizeof(q[0])); /* then the unsent ones */
        nq = keep + nq - n;
        if (nomem && !progress && !in_flight) { /* the chain alone exceeds RLIMIT_MEMLOCK */
            if (n == 1) uring_error(-ENOMEM);
            cap = n / 2;
        } else if (backoff && calls - done + due_failed > 0) {
            uring_enter(0, 1);
        } else if (backoff) {
            usleep(100);
        }
    }
}
#else /* no <linux/io_uring.h>: the io_uring modes say so */
static void uring_init(char *buf, size_t len) {
    (void)buf, (void)len;
    unavailable("cref_send.c was compiled without <linux/io_uring.h>");
}
#endif

/* Send what is queued and wait for every completion (the zero-copy modes). */
static void finish(void) {
#ifdef HAVE_URING
    if (uring) uring_flush();
    while (uring && (done < calls || due_failed > 0)) uring_enter(0, 1);
#endif
    while (zc && done < calls) reap(1);
}

/* One message: TCP may take it in several calls; a UDP datagram is all or nothing. */
static void send_msg(const char *p, size_t n) {
#ifdef HAVE_URING
    if (uring) { /* queued: sent BATCH at a time */
        q[nq].p = p;
        q[nq].len = (unsigned)n;
        if (++nq == per_enter) uring_flush();
        return;
    }
#endif
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(fd, p + off, n - off, zc ? MSG_ZEROCOPY : 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == ENOBUFS) { /* notifications or skbs pile up: drain, retry */
                enobufs++;
                if (zc) reap(1);
                continue;
            }
            die("send");
        }
        if (zc && ++calls % 32 == 0) reap(0);
        off += (size_t)k;
    }
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: cref_send FD copy|zc|uring|uring-fixed|uring-fixed-linked|"
                "uring-single|uring-fixed-single tcp|udp MSG WARMUP NBYTES SOURCE_BYTES\n");
        return 2;
    }
    fd = atoi(argv[1]);
    zc = strcmp(argv[2], "zc") == 0;
    linked = strcmp(argv[2], "uring-fixed-linked") == 0;
    int single = strcmp(argv[2], "uring-single") == 0 || strcmp(argv[2], "uring-fixed-single") == 0;
    fixed = linked || strcmp(argv[2], "uring-fixed") == 0
            || strcmp(argv[2], "uring-fixed-single") == 0;
    uring = fixed || single || strcmp(argv[2], "uring") == 0;
    per_enter = single ? 1 : BATCH;
    if (!zc && !uring && strcmp(argv[2], "copy") != 0) {
        fprintf(stderr, "cref_send: unknown mode %s\n", argv[2]);
        return 2;
    }
    udp = strcmp(argv[3], "udp") == 0;
    long msg = atol(argv[4]);
    long long warmup = atoll(argv[5]), nbytes = atoll(argv[6]), source = atoll(argv[7]);
    long wrap = source <= HOT_SPAN ? PERIOD : (source / PERIOD < 1 ? 1 : source / PERIOD) * PERIOD;
    size_t len = ((size_t)(wrap + msg) + 4095) & ~(size_t)4095; /* page-aligned buffer */
    char *buf = aligned_alloc(4096, len);
    if (!buf) die("aligned_alloc");
    size_t got = 0;
    while (got < (size_t)PERIOD) {
        ssize_t k = read(0, buf + got, (size_t)PERIOD - got);
        if (k <= 0) { errno = k ? errno : EPIPE; die("reading the pattern"); }
        got += (size_t)k;
    }
    for (long i = PERIOD; i < wrap + msg; i++) buf[i] = buf[i - PERIOD];
    if (zc) {
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0) die("SO_ZEROCOPY");
    }
    if (uring) uring_init(buf, len); /* SEND_ZC needs no SO_ZEROCOPY */
    /* UDP sends whole messages (the Python sender rounds up too); TCP cuts the last one. */
    long long off = 0, end = warmup;
    for (int phase = 0; phase < 2; phase++) {
        struct rusage r0, r1;
        double w0 = 0;
        long long calls0 = calls, done0 = done, copied0 = copied, enobufs0 = enobufs;
        if (phase == 1) {
            end = warmup + nbytes;
            w0 = now();
            getrusage(RUSAGE_SELF, &r0);
        }
        while (off < end) {
            long n = udp || end - off >= msg ? msg : (long)(end - off);
            send_msg(buf + off % wrap, (size_t)n);
            off += n;
        }
        finish();
        if (phase == 0) {
            off = warmup; /* the timed bytes start at stream offset warmup, as in Python */
            continue;
        }
        getrusage(RUSAGE_SELF, &r1);
        double wall = now() - w0;
        double user = tv(r1.ru_utime) - tv(r0.ru_utime), sys = tv(r1.ru_stime) - tv(r0.ru_stime);
        long long sent = udp ? (nbytes + msg - 1) / msg * msg : nbytes;
        long long c = calls - calls0, d = done - done0, cp = copied - copied0;
        long long uncopied = d ? sent / d * (d - cp) + sent % d * (d - cp) / d : 0;
        int zerocopy = zc || uring;
        printf("{\"ok\": true, \"cpu\": %.6f, \"user\": %.6f, \"sys\": %.6f, \"wall\": %.6f, "
               "\"bytes\": %lld, \"sends_zerocopy\": %lld, \"completions\": %lld, "
               "\"completions_copied\": %lld, \"bytes_zerocopy\": %lld, \"bytes_copied\": %lld, "
               "\"enobufs\": %lld}\n",
               user + sys, user, sys, wall, sent, c, d, cp, zerocopy ? uncopied : 0,
               zerocopy ? sent - uncopied : 0, enobufs - enobufs0);
    }
    return 0;
}
