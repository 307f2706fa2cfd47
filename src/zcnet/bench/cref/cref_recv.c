/* zcnet bench C reference receiver: recv into one buffer, or TCP_ZEROCOPY_RECEIVE.
 *
 * Usage: cref_recv FD recv|zc WARMUP NBYTES SIZE RCVLOWAT full|spot < pattern-period
 *
 * FD is a connected TCP socket whose benchmark header the Python server already read (one
 * page, so the pattern bytes that follow are page-aligned in the stream). stdin holds one period
 * of the stream pattern (zcnet._core.pattern): stream byte i is pattern[i % period].
 *
 * recv: recv() into one reused SIZE-byte buffer, MSG_WAITALL when RCVLOWAT > 0 (the Python
 * recv_into mode). zc: as tools/testing/selftests/net/tcp_mmap.c, one mmap'd window of SIZE
 * bytes on the socket reused by every getsockopt(TCP_ZEROCOPY_RECEIVE) (the kernel zaps what the
 * previous call mapped there), a copy buffer below one page for the unmappable tail (a larger
 * one turns calls into copies, docs/ARCHITECTURE.md 'Receive: copybuf'), and recv() for
 * recv_skip_hint; SO_RCVLOWAT min(RCVLOWAT, bytes wanted) before each poll (tcp_mmap's -l hint).
 *
 * Warm-up bytes are checked in full, untimed; the timed bytes get the first and last byte of
 * every chunk checked inside the getrusage(RUSAGE_SELF) window, or (full) every byte, the
 * checking CPU measured with the thread CPU clock and subtracted, as zcnet.bench.meter does.
 * Prints one JSON line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef TCP_ZEROCOPY_RECEIVE
#define TCP_ZEROCOPY_RECEIVE 35
#endif

#define PERIOD 65521L
#define PAGE 4096L
#define COPYBUF (PAGE - 1)

static unsigned char pattern[PERIOD];
static long long offset;      /* stream offset of the next byte */
static long long chunks, mapped, copied, calls;
static int full;              /* check every byte (else first and last of each chunk) */
static double verify_cpu;

static void fail(const char *what, const char *why) {
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, why);
    exit(1);
}

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void check_all(const unsigned char *p, long n) {
    long long off = offset;
    while (n > 0) {
        long start = (long)(off % PERIOD), k = PERIOD - start < n ? PERIOD - start : n;
        if (memcmp(p, pattern + start, (size_t)k) != 0) {
            char why[96];
            snprintf(why, sizeof(why), "stream bytes from %lld differ from the pattern", off);
            fail("verify", why);
        }
        p += k; off += k; n -= k;
    }
}

/* The bytes p[0..n) are stream bytes [offset, offset + n). */
static void consume(const unsigned char *p, long n, int timed) {
    if (n <= 0) return;
    if (!timed || full) {
        double t0 = thread_cpu();
        check_all(p, n);
        verify_cpu += timed ? thread_cpu() - t0 : 0;
    } else if (p[0] != pattern[offset % PERIOD] || p[n - 1] != pattern[(offset + n - 1) % PERIOD]) {
        char why[96];
        snprintf(why, sizeof(why), "spot check failed in stream bytes [%lld, %lld)", offset, offset + n);
        fail("verify", why);
    }
    offset += n;
    chunks++;
}

static int fd, waitall;
static long size;
static unsigned char *buf, *window;
static long rcvlowat, lowat_set = -1;

static long read_some(long want, int flags) {
    for (;;) {
        ssize_t k = recv(fd, buf, (size_t)want, flags);
        if (k > 0) return (long)k;
        if (k == 0) fail("recv", "EOF before the end of the stream");
        if (errno != EINTR) fail("recv", strerror(errno));
    }
}

static void pump_recv(long long total, int timed) {
    while (total > 0) {
        long want = total < size ? (long)total : size;
        long k = read_some(want, waitall ? MSG_WAITALL : 0);
        consume(buf, k, timed);
        copied += k;
        total -= k;
    }
}

static void pump_zc(long long total, int timed) {
    while (total > 0) {
        long ask = (total < size ? (long)total : size) & ~(PAGE - 1);
        if (ask == 0) { /* less than a page left in this phase */
            long k = read_some((long)total, 0);
            consume(buf, k, timed);
            copied += k; total -= k;
            continue;
        }
        long want = rcvlowat < total ? rcvlowat : (long)total;
        if (rcvlowat > 0 && want != lowat_set) {
            int v = (int)want;
            setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof(v));
            lowat_set = want;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) fail("poll", strerror(errno));
        /* A copy buffer only where its bytes cannot run past this phase's end (mapped <= ask,
         * copied <= COPYBUF), so the warm-up and timed bytes stay exactly apart. */
        struct tcp_zerocopy_receive zc;
        memset(&zc, 0, sizeof(zc));
        zc.address = (uint64_t)(uintptr_t)window;
        zc.length = (uint32_t)ask;
        if (total >= ask + COPYBUF) {
            zc.copybuf_address = (uint64_t)(uintptr_t)buf;
            zc.copybuf_len = COPYBUF;
        }
        socklen_t zl = sizeof(zc);
        if (getsockopt(fd, IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE, &zc, &zl) < 0) {
            if (errno == EINTR) continue;
            fail("getsockopt(TCP_ZEROCOPY_RECEIVE)", errno == EIO ? "EOF before the end" : strerror(errno));
        }
        calls++;
        if (zc.err) fail("socket error", strerror(zc.err));
        consume(window, (long)zc.length, timed);
        mapped += zc.length;
        total -= zc.length;
        long c = zc.copybuf_len > 0 ? zc.copybuf_len : 0;
        consume(buf, c, timed);
        copied += c;
        total -= c;
        long skip = (long)zc.recv_skip_hint;
        while (skip > 0 && total > 0) { /* bytes the kernel would not map: read them */
            long want2 = skip < total ? skip : (long)total;
            if (want2 > size) want2 = size;
            long k = read_some(want2, 0);
            consume(buf, k, timed);
            copied += k; total -= k; skip -= k;
        }
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
        fprintf(stderr, "usage: cref_recv FD recv|zc WARMUP NBYTES SIZE RCVLOWAT full|spot\n");
        return 2;
    }
    fd = atoi(argv[1]);
    int zcmode = strcmp(argv[2], "zc") == 0;
    long long warmup = atoll(argv[3]), nbytes = atoll(argv[4]);
    size = (atol(argv[5]) + PAGE - 1) & ~(PAGE - 1);
    rcvlowat = atol(argv[6]);
    full = strcmp(argv[7], "full") == 0;
    waitall = rcvlowat > 0;
    size_t got = 0;
    while (got < sizeof(pattern)) {
        ssize_t k = read(0, pattern + got, sizeof(pattern) - got);
        if (k <= 0) fail("reading the pattern", k ? strerror(errno) : "short");
        got += (size_t)k;
    }
    buf = aligned_alloc((size_t)PAGE, (size_t)size); /* page-aligned, as tcp_mmap's buffer */
    if (!buf) fail("aligned_alloc", strerror(errno));
    memset(buf, 0, (size_t)size); /* fault the pages in before the window, as Python's bytearray */
    if (zcmode) {
        window = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
        if (window == MAP_FAILED) fail("mmap of the socket", strerror(errno));
    }
    void (*pump)(long long, int) = zcmode ? pump_zc : pump_recv;
    pump(warmup, 0);
    long long mapped0 = mapped, copied0 = copied, calls0 = calls;
    chunks = 0;
    struct rusage r0, r1;
    double w0 = now();
    getrusage(RUSAGE_SELF, &r0);
    pump(nbytes, 1);
    getrusage(RUSAGE_SELF, &r1);
    double wall = now() - w0;
    double user = tv(r1.ru_utime) - tv(r0.ru_utime), sys = tv(r1.ru_stime) - tv(r0.ru_stime);
    double cpu = user + sys - verify_cpu;
    printf("{\"ok\": true, \"cpu\": %.6f, \"user\": %.6f, \"sys\": %.6f, \"wall\": %.6f, "
           "\"bytes\": %lld, \"verify_cpu\": %.6f, \"verified\": \"%s\", \"chunks\": %lld, "
           "\"bytes_mapped\": %lld, \"bytes_copied\": %lld, \"zerocopy_calls\": %lld, "
           "\"rx_mode\": \"%s\"}\n",
           cpu < 0 ? 0.0 : cpu, user, sys, wall, nbytes, verify_cpu, full ? "full" : "spot",
           chunks, mapped - mapped0, copied - copied0, calls - calls0, zcmode ? "zerocopy" : "copy");
    return 0;
}
