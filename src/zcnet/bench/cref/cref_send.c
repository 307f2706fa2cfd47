/* zcnet bench C reference sender: the same sends as the Python send modes, from C.
 *
 * Usage: cref_send FD copy|zc tcp|udp MSG WARMUP NBYTES SOURCE_BYTES < pattern-period
 *
 * FD is a connected socket set up by the Python side (TCP: the benchmark header is already
 * sent, so the receiver sees the benchmark's own wire protocol; UDP: UDP_SEGMENT already set
 * for GSO sends, tools/testing/selftests/net/udpgso_bench_tx.c). stdin holds one period of the
 * stream pattern (zcnet._core.pattern): stream byte i is pattern[i % period]. The messages walk
 * through a buffer of about SOURCE_BYTES (a whole number of periods; one period when
 * SOURCE_BYTES is at most 4 MiB, the Python senders' hot buffer), as zcnet.bench.pattern.Source.
 *
 * Sends WARMUP bytes untimed, then NBYTES inside a getrusage(RUSAGE_SELF) window that, for zc,
 * ends after the last completion was read from the error queue. zc: SO_ZEROCOPY and
 * send(MSG_ZEROCOPY), the error queue read every 32 sends and, on ENOBUFS (optmem full of
 * pending notifications), polled and drained before retrying
 * (Documentation/networking/msg_zerocopy.rst, tools/testing/selftests/net/msg_zerocopy.c).
 * Prints one JSON line.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

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

static int fd;
static int zc;
static long long calls, done, copied, enobufs;

static void die(const char *what) {
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, strerror(errno));
    exit(1);
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

static void finish(void) {
    while (zc && done < calls) reap(1);
}

/* One message: TCP may take it in several calls; a UDP datagram is all or nothing. */
static void send_msg(const char *p, size_t n) {
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
        fprintf(stderr, "usage: cref_send FD copy|zc tcp|udp MSG WARMUP NBYTES SOURCE_BYTES\n");
        return 2;
    }
    fd = atoi(argv[1]);
    zc = strcmp(argv[2], "zc") == 0;
    int udp = strcmp(argv[3], "udp") == 0;
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
        printf("{\"ok\": true, \"cpu\": %.6f, \"user\": %.6f, \"sys\": %.6f, \"wall\": %.6f, "
               "\"bytes\": %lld, \"sends_zerocopy\": %lld, \"completions\": %lld, "
               "\"bytes_zerocopy\": %lld, \"bytes_copied\": %lld, \"enobufs\": %lld}\n",
               user + sys, user, sys, wall, sent, c, d, zc ? uncopied : 0,
               zc ? sent - uncopied : 0, enobufs - enobufs0);
    }
    return 0;
}
