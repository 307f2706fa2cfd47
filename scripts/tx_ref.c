/* Reference C sender for scripts/tx_cpu.py: UDP with UDP_SEGMENT toward the ifb sink of the
 * namespace it runs in, plain send() or send(MSG_ZEROCOPY) reading the error queue every 16
 * sends. Prints {"user": s, "sys": s, "bytes": n} (getrusage of the sending loop).
 * Usage: tx_ref zc|copy BYTES POOL DGRAM GSO ADDR PORT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static void drain(int fd) {
    char control[256];
    for (;;) {
        struct msghdr msg = {.msg_control = control, .msg_controllen = sizeof(control)};
        if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EINTR) continue;
            return;
        }
    }
}

static double secs(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: tx_ref zc|copy BYTES POOL DGRAM GSO ADDR PORT\n"); return 2; }
    int zc = strcmp(argv[1], "zc") == 0;
    long long total = atoll(argv[2]);
    long pool = atol(argv[3]), dgram = atol(argv[4]);
    int gso = atoi(argv[5]);
    long nbuf = pool / dgram < 8 ? 8 : pool / dgram;
    char *buf = malloc(nbuf * dgram);
    if (!buf) return 1;
    for (long i = 0; i < nbuf * dgram; i++) buf[i] = (char)(i * 131 + (i >> 12));
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[7]))};
    inet_pton(AF_INET, argv[6], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) { perror("connect"); return 1; }
    if (setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &gso, sizeof(gso)) < 0) { perror("gso"); return 1; }
    int one = 1;
    if (zc && setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0) { perror("zc"); return 1; }
    long long count = total / dgram;
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    for (long long i = 0; i < count; i++) {
        ssize_t n = send(fd, buf + (i % nbuf) * dgram, dgram, zc ? MSG_ZEROCOPY : 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EINTR) { drain(fd); i--; continue; }
            perror("send"); return 1;
        }
        if (zc && (i & 15) == 15) drain(fd);
    }
    if (zc) drain(fd);
    getrusage(RUSAGE_SELF, &r1);
    printf("{\"user\": %.6f, \"sys\": %.6f, \"bytes\": %lld}\n",
           secs(r1.ru_utime) - secs(r0.ru_utime), secs(r1.ru_stime) - secs(r0.ru_stime),
           count * dgram);
    close(fd);
    return 0;
}
