/* wsblast: a trivial WebSocket fan-out server, to calibrate wsbench.
 *
 * It does the least a server can: one epoll loop, frames encoded once and the
 * same bytes written to every subscriber, writes coalesced per loop turn.
 *
 *   relay (default): a connection whose path starts with /pub is a publisher;
 *     every text frame it sends goes, as is, to every other connection
 *     (wsbench --mode plain --pub-path /pub).
 *   --flood K: once --expect N subscribers are connected (+1 s), it writes
 *     frames of K newline-joined messages {"ts":<now>,"s":0,"p":"x.."} of
 *     --size bytes each, as fast as the sockets take them, for --seconds, then
 *     closes every connection (wsbench --mode plain --no-pub).
 */
#include "common.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* --- SHA-1 and base64, for Sec-WebSocket-Accept --- */
static uint32_t rol(uint32_t v, int b) { return (v << b) | (v >> (32 - b)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t n, char *out) {
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = tb[v >> 18 & 63];
        out[o++] = tb[v >> 12 & 63];
        out[o++] = i + 1 < n ? tb[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tb[v & 63] : '=';
    }
    out[o] = 0;
}

/* --- connections, indexed by fd --- */
typedef struct {
    int open, is_pub, is_sub, dirty, want_out;
    buf_t in, out;
} conn_t;

#define MAX_FD 65536
static conn_t *conns;
static int ep_fd, *subs, n_subs = 0, *dirty, n_dirty = 0;
static int flood_k = 0, expect_n = 1, msg_size = 128, port = 0;
static double flood_s = 10;

static void set_out(int fd, int on) {
    conn_t *c = &conns[fd];
    if (c->want_out == on) return;
    c->want_out = on;
    struct epoll_event e = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = fd};
    epoll_ctl(ep_fd, EPOLL_CTL_MOD, fd, &e);
}

static void drop(int fd) {
    conn_t *c = &conns[fd];
    if (!c->open) return;
    close(fd);
    if (c->is_sub)
        for (int i = 0; i < n_subs; i++)
            if (subs[i] == fd) { subs[i] = subs[--n_subs]; break; }
    buf_free(&c->in);
    buf_free(&c->out);
    memset(c, 0, sizeof *c);
}

static void flush(int fd) {
    conn_t *c = &conns[fd];
    while (buf_pending(&c->out)) {
        ssize_t n = write(fd, c->out.p + c->out.off, buf_pending(&c->out));
        if (n > 0) { c->out.off += (size_t)n; continue; }
        if (n < 0 && errno == EAGAIN) break;
        if (n < 0 && errno == EINTR) continue;
        drop(fd);
        return;
    }
    if (!buf_pending(&c->out)) c->out.off = c->out.len = 0;
    set_out(fd, buf_pending(&c->out) > 0);
}

static size_t frame_header(unsigned char *h, int op, size_t len) {
    size_t n = 0;
    h[n++] = (unsigned char)(0x80 | op);
    if (len < 126) h[n++] = (unsigned char)len;
    else if (len < 65536) { h[n++] = 126; h[n++] = (unsigned char)(len >> 8); h[n++] = (unsigned char)len; }
    else { h[n++] = 127; for (int i = 7; i >= 0; i--) h[n++] = (unsigned char)(len >> (8 * i)); }
    return n;
}

static void queue_frame(int fd, int op, const char *p, size_t len) {
    conn_t *c = &conns[fd];
    unsigned char h[10];
    size_t hn = frame_header(h, op, len);
    buf_append(&c->out, h, hn);
    buf_append(&c->out, p, len);
    if (!c->dirty) { c->dirty = 1; dirty[n_dirty++] = fd; }
}

static void broadcast(const char *p, size_t len) {
    unsigned char h[10];
    size_t hn = frame_header(h, 1, len);
    for (int i = 0; i < n_subs; i++) {
        int fd = subs[i];
        conn_t *c = &conns[fd];
        if (buf_pending(&c->out) > (64u << 20)) continue; /* hopeless reader: skip */
        buf_append(&c->out, h, hn);
        buf_append(&c->out, p, len);
        if (!c->dirty) { c->dirty = 1; dirty[n_dirty++] = fd; }
    }
}

static void handshake(int fd, const char *req, size_t len) {
    conn_t *c = &conns[fd];
    const char *k = NULL;
    for (const char *p = req; p < req + len; p++) {
        if ((*p == 'S' || *p == 's') && !strncasecmp(p, "Sec-WebSocket-Key:", 18)) { k = p + 18; break; }
    }
    if (!k) { drop(fd); return; }
    while (*k == ' ') k++;
    char key[128];
    size_t kn = 0;
    while (k[kn] && k[kn] != '\r' && kn < 60) { key[kn] = k[kn]; kn++; }
    memcpy(key + kn, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char dig[20];
    sha1((unsigned char *)key, kn + 36, dig);
    char acc[40], resp[256];
    base64(dig, 20, acc);
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
    c->open = 2;
    c->is_pub = !strncmp(req, "GET /pub", 8);
    if (!c->is_pub) { c->is_sub = 1; subs[n_subs++] = fd; }
    buf_append(&c->out, resp, (size_t)n);
    if (!c->dirty) { c->dirty = 1; dirty[n_dirty++] = fd; }
}

static void on_read(int fd) {
    conn_t *c = &conns[fd];
    char tmp[65536];
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { drop(fd); return; }
    if (n < 0) return;
    buf_append(&c->in, tmp, (size_t)n);
    char *p = c->in.p;
    size_t len = c->in.len, pos = 0;
    if (c->open == 1) {
        char *e = memmem(p, len, "\r\n\r\n", 4);
        if (!e) return;
        handshake(fd, p, (size_t)(e - p) + 4);
        if (!conns[fd].open) return;
        pos = (size_t)(e - p) + 4;
    }
    while (len - pos >= 2) {
        unsigned char b0 = (unsigned char)p[pos], b1 = (unsigned char)p[pos + 1];
        size_t h = 2;
        uint64_t pl = b1 & 0x7f;
        if (pl == 126) { if (len - pos < 4) break; pl = (uint64_t)(unsigned char)p[pos + 2] << 8 | (unsigned char)p[pos + 3]; h = 4; }
        else if (pl == 127) { if (len - pos < 10) break; pl = 0; for (int i = 0; i < 8; i++) pl = pl << 8 | (unsigned char)p[pos + 2 + i]; h = 10; }
        if (b1 & 0x80) h += 4;
        if (len - pos < h + pl) break;
        char *pay = p + pos + h;
        if (b1 & 0x80) {
            unsigned char *mk = (unsigned char *)p + pos + h - 4;
            for (uint64_t i = 0; i < pl; i++) pay[i] ^= (char)mk[i & 3];
        }
        pos += h + pl;
        int op = b0 & 15;
        if (op == 8) { queue_frame(fd, 8, pay, pl >= 2 ? 2 : 0); flush(fd); drop(fd); return; }
        if (op == 9) queue_frame(fd, 10, pay, (size_t)pl);
        else if ((op == 1 || op == 2) && c->is_pub) broadcast(pay, (size_t)pl);
    }
    memmove(c->in.p, c->in.p + pos, len - pos);
    c->in.len = len - pos;
}

static void flush_dirty(void) {
    for (int i = 0; i < n_dirty; i++) {
        int fd = dirty[i];
        if (!conns[fd].open) continue;
        conns[fd].dirty = 0;
        flush(fd);
    }
    n_dirty = 0;
}

static void do_accept(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        if (fd >= MAX_FD) { close(fd); continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        memset(&conns[fd], 0, sizeof conns[fd]);
        conns[fd].open = 1;
        struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &e);
    }
}

int main(int argc, char **argv) {
    static struct option opts[] = {{"port", 1, 0, 'p'}, {"flood", 1, 0, 'f'}, {"expect", 1, 0, 'e'},
                                   {"size", 1, 0, 's'}, {"seconds", 1, 0, 't'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "p:f:e:s:t:", opts, NULL)) != -1) {
        switch (o) {
        case 'p': port = atoi(optarg); break;
        case 'f': flood_k = atoi(optarg); break;
        case 'e': expect_n = atoi(optarg); break;
        case 's': msg_size = atoi(optarg); break;
        case 't': flood_s = atof(optarg); break;
        default: fprintf(stderr, "usage: wsblast --port P [--flood K --expect N --size B --seconds S]\n"); return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    conns = calloc(MAX_FD, sizeof *conns);
    subs = calloc(MAX_FD, sizeof *subs);
    dirty = calloc(MAX_FD, sizeof *dirty);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    ep_fd = epoll_create1(0);
    struct epoll_event le = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep_fd, EPOLL_CTL_ADD, lfd, &le);
    fprintf(stderr, "wsblast listening on 127.0.0.1:%d\n", port);

    /* flood state */
    char *frame = NULL;
    size_t frame_len = 0;
    double flood_start = 0, flood_end = 0, ready_at = 0;
    uint64_t frames_written = 0;
    if (flood_k > 0) frame = malloc((size_t)flood_k * (size_t)(msg_size + 1) + 16);

    struct epoll_event evs[1024];
    for (;;) {
        int timeout = 50, busy = 0;
        if (flood_k > 0) {
            double t = mono_s();
            if (!ready_at && n_subs >= expect_n) ready_at = t + 1.0;
            if (ready_at && !flood_start && t >= ready_at) { flood_start = t; flood_end = t + flood_s; }
            if (flood_start && t < flood_end) {
                /* build one frame of K messages with a fresh timestamp */
                unsigned char h[10];
                size_t payload = 0;
                char *body = frame + 10;
                uint64_t ts = now_us();
                for (int k = 0; k < flood_k; k++) {
                    if (k) body[payload++] = '\n';
                    int n = sprintf(body + payload, "{\"ts\":%llu,\"s\":0,\"p\":\"", (unsigned long long)ts);
                    int pad = msg_size - n - 2;
                    if (pad < 0) pad = 0;
                    memset(body + payload + n, 'x', (size_t)pad);
                    memcpy(body + payload + n + pad, "\"}", 2);
                    payload += (size_t)n + (size_t)pad + 2;
                }
                size_t hn = frame_header(h, 1, payload);
                memcpy(body - hn, h, hn);
                char *start = body - hn;
                frame_len = hn + payload;
                for (int i = 0; i < n_subs; i++) {
                    int fd = subs[i];
                    conn_t *c = &conns[fd];
                    if (c->open != 2 || buf_pending(&c->out)) continue;
                    ssize_t n = write(fd, start, frame_len);
                    if (n == (ssize_t)frame_len) { frames_written++; busy = 1; }
                    else if (n > 0) { buf_append(&c->out, start + n, frame_len - (size_t)n); set_out(fd, 1); frames_written++; busy = 1; }
                    else if (n < 0 && errno == EAGAIN) set_out(fd, 1);
                }
                timeout = busy ? 0 : 1;
            } else if (flood_start && t >= flood_end) {
                fprintf(stderr, "flood done: %llu frames (%llu messages) in %.1fs\n", (unsigned long long)frames_written,
                        (unsigned long long)frames_written * (unsigned long long)flood_k, flood_s);
                for (int fd = 0; fd < MAX_FD; fd++)
                    if (conns[fd].open == 2) { queue_frame(fd, 8, "\x03\xe8", 2); }
                flush_dirty();
                double end = mono_s() + 2;
                while (mono_s() < end && n_subs > 0) {
                    int n = epoll_wait(ep_fd, evs, 1024, 20);
                    for (int i = 0; i < n; i++) {
                        int fd = evs[i].data.fd;
                        if (fd == lfd) continue;
                        if (evs[i].events & EPOLLOUT) flush(fd);
                        if (conns[fd].open && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_read(fd);
                    }
                }
                return 0;
            }
        }
        int n = epoll_wait(ep_fd, evs, 1024, timeout);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) { do_accept(lfd); continue; }
            if (evs[i].events & EPOLLOUT) flush(fd);
            if (conns[fd].open && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_read(fd);
        }
        flush_dirty();
    }
}
