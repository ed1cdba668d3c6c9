/* wsbench: a WebSocket fan-out load generator that should never be the bottleneck.
 *
 * One thread, one epoll loop, non-blocking sockets and its own minimal
 * WebSocket client (RFC 6455: HTTP upgrade, masked client frames, server frames
 * with 7/16/64-bit lengths, fragments, ping -> pong, close). It opens N
 * subscriber connections, performs a per-protocol subscribe handshake, then
 * publishes at a fixed rate through separate publisher connections and
 * measures, for every delivered message, now - the timestamp the publisher put
 * in it. Text frames may hold several messages separated by '\n'.
 *
 * Protocol modes (--mode, --pub-mode):
 *   centrifugo  {"id":1,"connect":{}} + {"id":2,"subscribe":{"channel":C}};
 *               server pings {} are answered with {}; publish commands
 *               {"id":N,"publish":{"channel":C,"data":DATA}}.
 *   centrifugo-pb  (or --mode centrifugo --protobuf) the same in Centrifugo's
 *               Protobuf protocol: offers Sec-WebSocket-Protocol
 *               centrifuge-protobuf (and requires it back), sends binary frames
 *               of varint-length-prefixed Commands (connect + subscribe in one
 *               frame), reads varint-length-prefixed Replies (several per frame);
 *               a ping (an empty Reply) is answered with a pong (an empty
 *               Command: the byte 0x00); a publication is Reply.push(4).pub(4),
 *               whose data(4) is DATA; publish = Command.publish(7){channel 1,
 *               data 2}.
 *   plain       the server pushes DATA as is; the publisher sends DATA frames.
 *   socketio    Engine.IO v4 websocket transport: 0{..} -> 40, 40{..} ->
 *               421["join",C], ack 431[..] = subscribed; ping 2 -> pong 3;
 *               events 42["msg",DATA]; the publisher emits 42["publish",DATA].
 *
 * DATA is a JSON object of exactly --size bytes:
 *   {"ch":"<channel>","ts":<us since epoch>,"s":<step>,"p":"xxxx..."}
 *
 * Many connections (bench/scale.py): --bind gives the sockets a source address
 * (one (source, destination) pair of addresses allows ~28k connections to a
 * port); --personal PATTERN subscribes connection i to its own channel
 * (PATTERN's %d = --first + i) and the publishers publish to random ones of
 * them; --also C subscribes every connection to C too, in the same handshake;
 * --control takes the steps from stdin (and prints events to stdout) so that a
 * runner can drive several generator processes in step, and publish to C itself.
 *
 * A run is a list of steps (rates, messages/s over all channels). Each step
 * publishes for --step seconds, then waits up to --drain seconds for the
 * stragglers; it passes when every expected delivery arrived and
 * p99 <= --p99-limit-ms. The JSON summary goes to stdout (or --out).
 */
#include "common.h"

#include <math.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>

enum { M_CENTRIFUGO, M_PLAIN, M_SOCKETIO, M_CENTRIFUGO_PB };
enum { ST_PENDING, ST_CONNECTING, ST_HANDSHAKE, ST_PROTO, ST_READY, ST_CLOSED, ST_FAILED };
enum { HOW_OPEN, HOW_CLOSE_FRAME, HOW_RESET, HOW_EOF, HOW_ERROR, HOW_LOCAL };
static const char *HOW_NAMES[] = {"open", "close_frame", "reset", "eof", "error", "local"};

#define MAX_STEPS 64
#define MAX_CODES 32

typedef struct {
    const char *host;
    int port;
    const char *path; /* may contain %s: replaced by the channel name */
    int mode;
} endpoint_t;

typedef struct {
    int fd;
    int idx;
    int state;
    int is_pub, slow, stalled;
    int channel;
    int retries;
    int acks;    /* subscribe replies received (2, or 2 and 3 with --also) */
    uint32_t ev; /* events registered with epoll */
    int how;     /* HOW_* once closed */
    int close_code;
    const endpoint_t *ep;
    buf_t in, frag, out;
    double t_connect; /* monotonic, first connect() of this connection */
    uint64_t delivered;
    long next_id;
    int slow_how, slow_code; /* a slow connection's state when the run ended (before our close) */
} conn_t;

typedef struct {
    double rate, window;
    uint64_t target, published, expected, delivered, pub_acks, pub_errors, late;
    uint64_t slow_delivered;
    hist_t h;
    double t0, t_end, t_drained;
    uint64_t first_us, last_us;
    double gen_cpu0, gen_cpu1;
    procstat_t srv0, srv1;
    cpustat_t cpu0, cpu1;
    int pub_backlog, done, pass, ok, retry;
    uint64_t external; /* publications per subscriber from elsewhere (--control) */
} step_t;

/* --- options --- */
static endpoint_t sub_ep = {"127.0.0.1", 0, "/connection/websocket", M_CENTRIFUGO};
static endpoint_t pub_ep = {NULL, 0, NULL, -1};
static int n_conns = 100, n_pubs = 1, n_channels = 1, msg_size = 128, inflight_max = 100;
static const char *chan_prefix = "bench";
static double step_s = 5, drain_s = 3, settle_s = 1, gap_s = 1, connect_timeout_s = 60;
static double hold_s = -1, p99_limit_ms = 50, max_run_s = 600, slow_resume_s = 3;
static int stop_on_fail = 0, n_slow = 0, slow_rcvbuf = 4096, max_retries = 3, no_pub = 0;
static int server_pids[16], n_server_pids = 0;
static const char *out_path = NULL;
static double rates[MAX_STEPS];
static int n_steps = 0;
static const char *bind_addr = NULL;    /* --bind: source address of every socket */
static const char *personal = NULL;     /* --personal: a channel per connection, "%d" = index */
static int first_index = 0;             /* --first: index of connection 0 in --personal names */
static const char *also_channel = NULL; /* --also: a second channel every subscriber joins */
static int control = 0, dump_hist = 0;  /* --control, --hist */

/* --- state --- */
static conn_t *conns;
static int n_total, ep_fd;
static int *chan_ready; /* ready, open, non-slow subscribers per channel */
static char **chan_names;
static int n_ever_ready = 0;
static int inflight = 0, n_ready_subs = 0, n_ready_pubs = 0, n_failed = 0, shutting_down = 0;
static int *retry_q, retry_len = 0, next_new = 0;
static char *scratch;
static size_t scratch_cap = 1 << 20;
static step_t steps[MAX_STEPS];
static int cur_step = -1;
static uint64_t now_cache, last_delivery;
static int refine_n = 0;
static double recover_s = 20;
static int delack = 0, confirm = 0;
static double ramp_p99_ms = -1; /* the ramp goes on while p99 <= this (default: the limit) */
static hist_t connect_hist;
static int codes[MAX_CODES][2], n_codes = 0;
static uint64_t unexpected_msgs = 0, pub_echo = 0, bad_step = 0, pings = 0;
static int protobuf = 0;
static double t_start, t_last_ready;
static long pub_seq = 0;

static void conn_close(conn_t *c, int how, int code);
static void conn_flush(conn_t *c);
static void on_text(conn_t *c, const char *p, size_t n);
static void control_read(void);
static void print_step(FILE *f, int k);
static void print_closes(FILE *f);

#define CONTROL_TAG UINT32_MAX /* epoll data of stdin in --control mode */

static void count_code(int code) {
    for (int i = 0; i < n_codes; i++)
        if (codes[i][0] == code) { codes[i][1]++; return; }
    if (n_codes < MAX_CODES) { codes[n_codes][0] = code; codes[n_codes][1] = 1; n_codes++; }
}

static void update_events(conn_t *c) {
    if (c->fd < 0) return;
    uint32_t want = c->stalled ? 0 : EPOLLIN;
    if (c->state == ST_CONNECTING || buf_pending(&c->out)) want |= EPOLLOUT;
    if (want == c->ev) return;
    struct epoll_event e = {.events = want, .data.u32 = (uint32_t)c->idx};
    if (epoll_ctl(ep_fd, EPOLL_CTL_MOD, c->fd, &e) < 0) die("epoll_ctl mod");
    c->ev = want;
}

/* Append one masked client frame to c->out. */
static void ws_append(conn_t *c, int opcode, const char *data, size_t len) {
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) hdr[h++] = (unsigned char)(0x80 | len);
    else if (len < 65536) { hdr[h++] = 0x80 | 126; hdr[h++] = (unsigned char)(len >> 8); hdr[h++] = (unsigned char)len; }
    else { hdr[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) hdr[h++] = (unsigned char)(len >> (8 * i)); }
    uint32_t key = rnd32();
    unsigned char mk[4];
    memcpy(mk, &key, 4);
    memcpy(hdr + h, mk, 4);
    h += 4;
    buf_reserve(&c->out, h + len);
    unsigned char *dst = (unsigned char *)c->out.p + c->out.len;
    memcpy(dst, hdr, h);
    dst += h;
    for (size_t i = 0; i < len; i++) dst[i] = (unsigned char)data[i] ^ mk[i & 3];
    c->out.len += h + len;
}

static void ws_send(conn_t *c, int opcode, const char *data, size_t len) {
    ws_append(c, opcode, data, len);
    conn_flush(c);
}

static void send_text(conn_t *c, const char *s) { ws_send(c, 1, s, strlen(s)); }

static void conn_flush(conn_t *c) {
    while (c->fd >= 0 && buf_pending(&c->out)) {
        ssize_t n = write(c->fd, c->out.p + c->out.off, buf_pending(&c->out));
        if (n > 0) { c->out.off += (size_t)n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n < 0 && errno == EINTR) continue;
        conn_close(c, errno == ECONNRESET || errno == EPIPE ? HOW_RESET : HOW_ERROR, 0);
        return;
    }
    if (c->fd >= 0 && buf_pending(&c->out) == 0) c->out.off = c->out.len = 0;
    update_events(c);
}

static void on_ready(conn_t *c) {
    if (c->state == ST_READY) return;
    c->state = ST_READY;
    inflight--;
    if (!c->is_pub) n_ever_ready++;
    double t = mono_s();
    h_record(&connect_hist, (uint64_t)((t - c->t_connect) * 1e6));
    if (c->is_pub) { n_ready_pubs++; return; }
    n_ready_subs++;
    t_last_ready = t;
    if (!c->slow) chan_ready[c->channel]++;
    if (c->slow && cur_step >= 0) { c->stalled = 1; update_events(c); }
}

static const char *chan_of(conn_t *c) { return chan_names[c->channel]; }

static void start_connect(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c->slow && slow_rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &slow_rcvbuf, sizeof slow_rcvbuf);
    if (bind_addr) {
        /* the port is picked at connect(), for this destination (bind() alone would take one
           of the address's ~28k ephemeral ports whatever the destination) */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        inet_pton(AF_INET, bind_addr, &src.sin_addr);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind");
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->ep->port)};
    inet_pton(AF_INET, c->ep->host, &sa.sin_addr);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->ev = 0;
    c->how = HOW_OPEN;
    c->close_code = -1;
    c->acks = 0;
    if (c->t_connect == 0) c->t_connect = mono_s();
    inflight++;
    struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)c->idx};
    if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl add");
    c->ev = EPOLLOUT;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        conn_close(c, HOW_ERROR, 0);
    }
}

#define PB_SUBPROTOCOL "centrifuge-protobuf"

/* --- Protobuf: varints, and a reader of one message's fields --- */
static size_t pb_varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

static size_t pb_put_varint(unsigned char *dst, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) { dst[n++] = (unsigned char)(v | 0x80); v >>= 7; }
    dst[n++] = (unsigned char)v;
    return n;
}

/* Read a varint at *p (< e): 0 if truncated or longer than 10 bytes. */
static int pb_get_varint(const unsigned char **p, const unsigned char *e, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70 && *p < e; shift += 7) {
        unsigned char b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *v = x; return 1; }
    }
    return 0;
}

typedef struct {
    int field, wire;
    uint64_t varint;          /* wire type 0 */
    const unsigned char *val; /* wire type 2: the bytes */
    size_t len;
} pb_field_t;

/* Next field of a message [*p, e): 1, 0 at the end, -1 if malformed. */
static int pb_next(const unsigned char **p, const unsigned char *e, pb_field_t *f) {
    uint64_t key, n;
    if (*p >= e) return 0;
    if (!pb_get_varint(p, e, &key)) return -1;
    f->field = (int)(key >> 3);
    f->wire = (int)(key & 7);
    switch (f->wire) {
    case 0: return pb_get_varint(p, e, &f->varint) ? 1 : -1;
    case 1: if (e - *p < 8) return -1; *p += 8; return 1;
    case 5: if (e - *p < 4) return -1; *p += 4; return 1;
    case 2:
        if (!pb_get_varint(p, e, &n) || n > (uint64_t)(e - *p)) return -1;
        f->val = *p;
        f->len = (size_t)n;
        *p += n;
        return 1;
    default: return -1; /* groups: not in this protocol */
    }
}

static void send_handshake(conn_t *c) {
    char path[512], req[1024];
    snprintf(path, sizeof path, c->ep->path, chan_of(c));
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "%sOrigin: http://%s:%d\r\n\r\n",
                     path, c->ep->host, c->ep->port,
                     c->ep->mode == M_CENTRIFUGO_PB ? "Sec-WebSocket-Protocol: " PB_SUBPROTOCOL "\r\n" : "",
                     c->ep->host, c->ep->port);
    buf_append(&c->out, req, (size_t)n);
    c->state = ST_HANDSHAKE;
    conn_flush(c);
}

/* The WebSocket is open: start the protocol's own handshake. */
static void on_open(conn_t *c) {
    c->state = ST_PROTO;
    char msg[512];
    switch (c->ep->mode) {
    case M_PLAIN:
        on_ready(c);
        break;
    case M_CENTRIFUGO:
        if (c->is_pub) {
            send_text(c, "{\"id\":1,\"connect\":{}}");
        } else {
            int n = snprintf(msg, sizeof msg, "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"%s\"}}",
                             chan_of(c));
            if (also_channel)
                snprintf(msg + n, sizeof msg - (size_t)n, "\n{\"id\":3,\"subscribe\":{\"channel\":\"%s\"}}",
                         also_channel);
            send_text(c, msg);
        }
        c->next_id = 2;
        break;
    case M_CENTRIFUGO_PB: {
        /* Command{id:1, connect:{}} = 08 01 22 00, and for a subscriber
           Command{id:2, subscribe:{channel:C}} = 08 02 2a L 0a l C; each prefixed with its length */
        unsigned char b[600];
        size_t k = 0, cl = strlen(chan_of(c));
        if (cl > 250) cl = 250;
        memcpy(b, "\x04\x08\x01\x22\x00", 5);
        k = 5;
        if (!c->is_pub) {
            size_t sub = 1 + pb_varint_len(cl) + cl;      /* SubscribeRequest */
            size_t cmd = 2 + 1 + pb_varint_len(sub) + sub; /* Command */
            k += pb_put_varint(b + k, cmd);
            b[k++] = 0x08, b[k++] = 0x02, b[k++] = 0x2a;
            k += pb_put_varint(b + k, sub);
            b[k++] = 0x0a;
            k += pb_put_varint(b + k, cl);
            memcpy(b + k, chan_of(c), cl);
            k += cl;
        }
        ws_send(c, 2, (const char *)b, k);
        c->next_id = 2;
        break;
    }
    case M_SOCKETIO:
        break; /* wait for the Engine.IO open packet */
    }
}

static void deliver(conn_t *c, const char *p, size_t n) {
    const char *t = memmem(p, n, "\"ts\":", 5);
    if (!t) { unexpected_msgs++; return; }
    const char *e = p + n;
    t += 5;
    uint64_t ts = 0;
    while (t < e && *t >= '0' && *t <= '9') ts = ts * 10 + (uint64_t)(*t++ - '0');
    int s = 0;
    if (e - t > 5 && !memcmp(t, ",\"s\":", 5)) {
        t += 5;
        while (t < e && *t >= '0' && *t <= '9') s = s * 10 + (*t++ - '0');
    }
    if (c->is_pub) { pub_echo++; return; }
    if (s < 0 || s >= MAX_STEPS) { bad_step++; return; }
    step_t *st = &steps[s];
    c->delivered++;
    last_delivery = now_cache;
    if (c->slow) { st->slow_delivered++; return; }
    if (st->done) { st->late++; return; } /* after the step's drain: lost for it */
    uint64_t lat = now_cache > ts ? now_cache - ts : 0;
    h_record(&st->h, lat);
    st->delivered++;
    if (!st->first_us) st->first_us = now_cache;
    st->last_us = now_cache;
}

/* A reply to command `id` (p, n: the reply as text, for error messages). */
static void on_reply_id(conn_t *c, long id, int err, const char *p, size_t n) {
    if (c->is_pub) {
        if (id == 1) {
            if (err) { fprintf(stderr, "publisher connect failed: %.*s\n", (int)n, p); conn_close(c, HOW_LOCAL, 0); }
            else on_ready(c);
        } else if (cur_step >= 0) {
            if (err) {
                if (steps[cur_step].pub_errors++ < 3) fprintf(stderr, "publish error: %.*s\n", (int)(n > 200 ? 200 : n), p);
            } else steps[cur_step].pub_acks++;
        }
        return;
    }
    if (id == 1 && err) { fprintf(stderr, "connect failed: %.*s\n", (int)n, p); conn_close(c, HOW_LOCAL, 0); return; }
    if (id == 2 || (id == 3 && also_channel)) {
        if (err) { fprintf(stderr, "subscribe failed: %.*s\n", (int)n, p); conn_close(c, HOW_LOCAL, 0); return; }
        if (++c->acks == (also_channel ? 2 : 1)) on_ready(c);
    }
}

static void on_reply(conn_t *c, const char *p, size_t n) {
    long id = 0;
    const char *q = p + 6, *e = p + n;
    while (q < e && *q >= '0' && *q <= '9') id = id * 10 + (*q++ - '0');
    on_reply_id(c, id, memmem(p, n, "\"error\"", 7) != NULL, p, n);
}

/* One Protobuf Reply (without its length prefix). */
static void on_pb_reply(conn_t *c, const unsigned char *p, size_t n) {
    if (n == 0) { /* an empty Reply: a ping; the pong is an empty Command */
        pings++;
        ws_send(c, 2, "\0", 1);
        return;
    }
    const unsigned char *q = p, *e = p + n, *push = NULL, *error = NULL;
    size_t push_len = 0, error_len = 0;
    uint64_t id = 0;
    pb_field_t f;
    int r;
    while ((r = pb_next(&q, e, &f)) > 0) {
        if (f.field == 1 && f.wire == 0) id = f.varint;
        else if (f.field == 2 && f.wire == 2) error = f.val, error_len = f.len;
        else if (f.field == 4 && f.wire == 2) push = f.val, push_len = f.len;
    }
    if (r < 0) { unexpected_msgs++; return; }
    if (id) {
        char text[256] = "";
        int tn = 0;
        if (error) { /* Error{code 1, message 2} */
            uint64_t code = 0;
            const unsigned char *m = NULL;
            size_t ml = 0;
            for (q = error, e = error + error_len; pb_next(&q, e, &f) > 0;) {
                if (f.field == 1 && f.wire == 0) code = f.varint;
                else if (f.field == 2 && f.wire == 2) m = f.val, ml = f.len;
            }
            tn = snprintf(text, sizeof text, "error %llu %.*s", (unsigned long long)code, (int)(ml > 200 ? 200 : ml),
                          m ? (const char *)m : "");
        }
        on_reply_id(c, (long)id, error != NULL, text, tn > 0 ? (size_t)tn : 0);
        return;
    }
    if (!push) { unexpected_msgs++; return; }
    /* Push{channel 2, pub 4}; Publication{data 4} */
    const unsigned char *pub = NULL;
    size_t pub_len = 0;
    for (q = push, e = push + push_len; (r = pb_next(&q, e, &f)) > 0;)
        if (f.field == 4 && f.wire == 2) pub = f.val, pub_len = f.len;
    if (r < 0 || !pub) { unexpected_msgs++; return; }
    for (q = pub, e = pub + pub_len; (r = pb_next(&q, e, &f)) > 0;)
        if (f.field == 4 && f.wire == 2) { deliver(c, (const char *)f.val, f.len); return; }
    unexpected_msgs++;
}

/* A Protobuf frame: varint-length-prefixed Replies, back to back. */
static void on_pb(conn_t *c, const char *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data, *e = p + n;
    while (p < e && c->fd >= 0) {
        uint64_t len;
        if (!pb_get_varint(&p, e, &len) || len > (uint64_t)(e - p)) { unexpected_msgs++; return; }
        on_pb_reply(c, p, (size_t)len);
        p += len;
    }
}

static void on_data(conn_t *c, const char *p, size_t n) {
    if (c->ep->mode == M_CENTRIFUGO_PB) on_pb(c, p, n);
    else on_text(c, p, n);
}

static void on_message(conn_t *c, const char *p, size_t n) {
    if (n == 0) return;
    switch (c->ep->mode) {
    case M_PLAIN:
        deliver(c, p, n);
        return;
    case M_CENTRIFUGO:
        if (n == 2 && p[0] == '{' && p[1] == '}') { pings++; send_text(c, "{}"); return; }
        if (n > 6 && !memcmp(p, "{\"id\":", 6)) { on_reply(c, p, n); return; }
        deliver(c, p, n);
        return;
    case M_SOCKETIO:
        if (p[0] == '4' && n >= 2) {
            if (p[1] == '2') { deliver(c, p, n); return; }
            if (p[1] == '0') { /* namespace connected */
                if (c->is_pub) { on_ready(c); return; }
                char msg[512];
                snprintf(msg, sizeof msg, "421[\"join\",\"%s\"]", chan_of(c));
                send_text(c, msg);
                return;
            }
            if (p[1] == '3') { if (!c->is_pub) on_ready(c); return; }
            if (p[1] == '4') { fprintf(stderr, "socket.io connect_error: %.*s\n", (int)n, p); conn_close(c, HOW_LOCAL, 0); return; }
            if (p[1] == '1') { conn_close(c, HOW_LOCAL, 0); return; }
            unexpected_msgs++;
            return;
        }
        if (p[0] == '2') { pings++; send_text(c, "3"); return; }
        if (p[0] == '0') { send_text(c, "40"); return; }
        if (p[0] == '1') { conn_close(c, HOW_LOCAL, 0); return; }
        if (p[0] == '6') return; /* noop */
        unexpected_msgs++;
        return;
    }
}

static void on_text(conn_t *c, const char *p, size_t n) {
    const char *e = p + n;
    while (p < e && c->fd >= 0) {
        const char *nl = memchr(p, '\n', (size_t)(e - p));
        const char *end = nl ? nl : e;
        on_message(c, p, (size_t)(end - p));
        p = nl ? nl + 1 : e;
    }
}

static void on_frame(conn_t *c, int fin, int op, const char *p, size_t n) {
    if (op == 0 || op == 1 || op == 2) {
        if (op != 0 && fin && c->frag.len == 0) { on_data(c, p, n); return; }
        buf_append(&c->frag, p, n);
        if (fin) {
            on_data(c, c->frag.p, c->frag.len);
            c->frag.len = 0;
        }
        return;
    }
    if (op == 9) { ws_send(c, 10, p, n); return; }
    if (op == 10) return;
    if (op == 8) {
        int code = n >= 2 ? ((unsigned char)p[0] << 8 | (unsigned char)p[1]) : 1005;
        char reply[2] = {(char)(code >> 8), (char)code};
        if (code != 1005 && code != 1006) ws_send(c, 8, reply, 2);
        else ws_send(c, 8, "", 0);
        conn_close(c, HOW_CLOSE_FRAME, code);
    }
}

/* Parse frames in buf; return bytes consumed. */
static size_t parse_frames(conn_t *c, char *buf, size_t len) {
    size_t pos = 0;
    while (c->fd >= 0 && len - pos >= 2) {
        unsigned char b0 = (unsigned char)buf[pos], b1 = (unsigned char)buf[pos + 1];
        size_t h = 2;
        uint64_t plen = b1 & 0x7f;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = ((uint64_t)(unsigned char)buf[pos + 2] << 8) | (unsigned char)buf[pos + 3];
            h = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = (plen << 8) | (unsigned char)buf[pos + 2 + i];
            h = 10;
        }
        int masked = b1 & 0x80;
        if (masked) h += 4;
        if (len - pos < h + plen) break;
        char *payload = buf + pos + h;
        if (masked) {
            const unsigned char *mk = (unsigned char *)buf + pos + h - 4;
            for (uint64_t i = 0; i < plen; i++) payload[i] ^= (char)mk[i & 3];
        }
        pos += h + plen;
        on_frame(c, b0 & 0x80, b0 & 0x0f, payload, (size_t)plen);
    }
    return pos;
}

static void on_readable(conn_t *c) {
    size_t left = c->in.len;
    if (scratch_cap < left + (256 << 10)) {
        scratch_cap = left + (1 << 20);
        scratch = realloc(scratch, scratch_cap);
        if (!scratch) die("realloc");
    }
    if (left) memcpy(scratch, c->in.p, left);
    ssize_t n = read(c->fd, scratch + left, scratch_cap - left);
    if (n == 0) { conn_close(c, HOW_EOF, 0); return; }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        conn_close(c, errno == ECONNRESET ? HOW_RESET : HOW_ERROR, 0);
        return;
    }
    now_cache = now_us();
    if (delack) { int zero = 0; setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero); }
    size_t len = left + (size_t)n, pos = 0;
    if (c->state == ST_HANDSHAKE) {
        char *end = memmem(scratch, len, "\r\n\r\n", 4);
        if (!end) {
            if (len > 16384) { conn_close(c, HOW_LOCAL, 0); return; }
            c->in.len = 0;
            buf_append(&c->in, scratch, len);
            return;
        }
        if (len < 12 || memcmp(scratch + 9, "101", 3) != 0) {
            fprintf(stderr, "handshake refused: %.*s\n", (int)(strchr(scratch, '\r') - scratch), scratch);
            conn_close(c, HOW_LOCAL, 0);
            return;
        }
        if (c->ep->mode == M_CENTRIFUGO_PB && !memmem(scratch, (size_t)(end - scratch), PB_SUBPROTOCOL, strlen(PB_SUBPROTOCOL))) {
            fprintf(stderr, "the server did not accept the subprotocol " PB_SUBPROTOCOL "\n");
            conn_close(c, HOW_LOCAL, 0);
            return;
        }
        pos = (size_t)(end - scratch) + 4;
        on_open(c);
    }
    if (c->fd >= 0) pos += parse_frames(c, scratch + pos, len - pos);
    if (c->fd < 0) return;
    c->in.len = 0;
    if (pos < len) buf_append(&c->in, scratch + pos, len - pos);
    else if (c->in.cap > (64 << 10)) buf_free(&c->in);
}

static void conn_close(conn_t *c, int how, int code) {
    if (c->fd < 0) return;
    close(c->fd); /* also removes it from epoll */
    c->fd = -1;
    c->ev = 0;
    int was = c->state;
    buf_free(&c->in);
    buf_free(&c->frag);
    buf_free(&c->out);
    c->how = how;
    c->close_code = how == HOW_CLOSE_FRAME ? code : -1;
    if (was == ST_READY) {
        c->state = ST_CLOSED;
        if (!shutting_down) {
            count_code(how == HOW_CLOSE_FRAME ? code : -how);
            if (c->is_pub) { n_ready_pubs--; fprintf(stderr, "publisher connection lost (%s %d)\n", HOW_NAMES[how], code); }
            else { n_ready_subs--; if (!c->slow) chan_ready[c->channel]--; }
        }
        return;
    }
    inflight--;
    if (!shutting_down && c->retries < max_retries) {
        c->retries++;
        c->state = ST_PENDING;
        retry_q[retry_len++] = c->idx;
    } else {
        c->state = ST_FAILED;
        n_failed++;
        count_code(how == HOW_CLOSE_FRAME ? code : -how);
    }
}

static void on_event(conn_t *c, uint32_t ev) {
    if (c->fd < 0) return;
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (ev & (EPOLLERR | EPOLLHUP))) { conn_close(c, HOW_ERROR, 0); return; }
        send_handshake(c);
        return;
    }
    if (ev & EPOLLOUT) conn_flush(c);
    if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        /* a stalled (slow) connection only gets HUP/ERR: it is dead, read what is left */
        on_readable(c);
    }
}

static void start_pending(void) {
    while (inflight < inflight_max && !shutting_down) {
        int i;
        if (retry_len) i = retry_q[--retry_len];
        else if (next_new < n_total) i = next_new++;
        else break;
        start_connect(&conns[i]);
    }
}

static void poll_once(int timeout_ms) {
    static struct epoll_event evs[1024];
    start_pending();
    int n = epoll_wait(ep_fd, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u32 == CONTROL_TAG) control_read();
        else on_event(&conns[evs[i].data.u32], evs[i].events);
    }
}

static void poll_for(double seconds) {
    double end = mono_s() + seconds;
    for (double t = mono_s(); t < end; t = mono_s()) {
        int ms = (int)((end - t) * 1000);
        poll_once(ms < 1 ? 1 : ms > 50 ? 50 : ms);
    }
}

/* --- publishing --- */
static char *msgbuf;

static size_t build_data(char *dst, const char *ch, uint64_t ts, int step) {
    int n = sprintf(dst, "{\"ch\":\"%s\",\"ts\":%llu,\"s\":%d,\"p\":\"", ch, (unsigned long long)ts, step);
    int pad = msg_size - n - 2;
    if (pad < 0) pad = 0;
    memset(dst + n, 'x', (size_t)pad);
    n += pad;
    memcpy(dst + n, "\"}", 2);
    return (size_t)n + 2;
}

#define PB_HEADROOM 768 /* msgbuf: room for the Protobuf headers in front of DATA */

static void publish_one(conn_t *pc, int ch, int step) {
    char *m = msgbuf;
    size_t n = 0;
    uint64_t ts = now_us();
    switch (pc->ep->mode) {
    case M_CENTRIFUGO_PB: {
        /* varint(len) Command{id 1: N, publish 7: PublishRequest{channel 1: C, data 2: DATA}} */
        char *data = msgbuf + PB_HEADROOM;
        size_t dl = build_data(data, chan_names[ch], ts, step), cl = strlen(chan_names[ch]);
        if (cl > 250) cl = 250;
        uint64_t id = (uint64_t)pc->next_id++;
        size_t req = 1 + pb_varint_len(cl) + cl + 1 + pb_varint_len(dl) + dl;
        size_t cmd = 1 + pb_varint_len(id) + 1 + pb_varint_len(req) + req;
        unsigned char hdr[PB_HEADROOM];
        size_t h = pb_put_varint(hdr, cmd);
        hdr[h++] = 0x08;
        h += pb_put_varint(hdr + h, id);
        hdr[h++] = 0x3a;
        h += pb_put_varint(hdr + h, req);
        hdr[h++] = 0x0a;
        h += pb_put_varint(hdr + h, cl);
        memcpy(hdr + h, chan_names[ch], cl);
        h += cl;
        hdr[h++] = 0x12;
        h += pb_put_varint(hdr + h, dl);
        memcpy(data - h, hdr, h);
        ws_append(pc, 2, data - h, h + dl);
        return;
    }
    case M_CENTRIFUGO:
        n = (size_t)sprintf(m, "{\"id\":%ld,\"publish\":{\"channel\":\"%s\",\"data\":", pc->next_id++, chan_names[ch]);
        n += build_data(m + n, chan_names[ch], ts, step);
        memcpy(m + n, "}}", 2);
        n += 2;
        break;
    case M_SOCKETIO:
        n = (size_t)sprintf(m, "42[\"publish\",");
        n += build_data(m + n, chan_names[ch], ts, step);
        m[n++] = ']';
        break;
    default:
        n = build_data(m, chan_names[ch], ts, step);
    }
    ws_append(pc, 1, m, n);
}

static conn_t *pub_conn(int k) { return &conns[n_conns + k]; }

static void publish_due(step_t *st, int k, double t) {
    /* message i is due at t0 + i / rate: the first one right at the start */
    uint64_t due = (uint64_t)((t - st->t0) * st->rate) + 1;
    if (due > st->target) due = st->target;
    if (st->published >= due) return;
    int burst = 0, tries = 0;
    if (n_ready_pubs <= 0) return;
    while (st->published < due && burst < 20000 && tries++ < 40000) {
        conn_t *pc = pub_conn((int)(pub_seq % n_pubs));
        int ch = personal ? (int)(rnd32() % (uint32_t)n_channels) : (int)(pub_seq % n_channels);
        pub_seq++;
        if (pc->state != ST_READY || pc->fd < 0) continue;
        publish_one(pc, ch, k);
        st->published++;
        st->expected += (uint64_t)chan_ready[ch];
        burst++;
    }
    for (int i = 0; i < n_pubs; i++) {
        conn_t *pc = pub_conn(i);
        if (pc->fd >= 0) {
            conn_flush(pc);
            if (pc->fd >= 0 && buf_pending(&pc->out) > (64u << 20)) st->pub_backlog = 1;
        }
    }
}

static void run_step(int k) {
    step_t *st = &steps[k];
    cur_step = k;
    st->window = step_s;
    st->target = no_pub ? 0 : (uint64_t)(st->rate * step_s + 0.5);
    if (st->external) {
        uint64_t subs = 0;
        for (int i = 0; i < n_channels; i++) subs += (uint64_t)chan_ready[i];
        st->expected += st->external * subs;
    }
    procs_read(server_pids, n_server_pids, &st->srv0);
    cpustat_read(&st->cpu0);
    st->gen_cpu0 = self_cpu_s(NULL, NULL);
    st->t0 = mono_s();
    if (control) { /* the runner publishes the external messages once every generator said this */
        printf("{\"event\":\"started\",\"step\":%d}\n", k);
        fflush(stdout);
    }
    double end = st->t0 + step_s;
    for (double t = mono_s(); t < end && !st->pub_backlog; t = mono_s()) {
        if (!no_pub) publish_due(st, k, t);
        poll_once(1);
    }
    if (!no_pub && !st->pub_backlog) publish_due(st, k, end); /* the last one, due at the end */
    st->t_end = mono_s();
    procs_read(server_pids, n_server_pids, &st->srv1);
    cpustat_read(&st->cpu1);
    st->gen_cpu1 = self_cpu_s(NULL, NULL);
    double dend = st->t_end + drain_s;
    while (mono_s() < dend && ((no_pub && !st->external) || st->delivered < st->expected)) poll_once(2);
    st->t_drained = mono_s();
    st->done = 1;
    uint64_t p99 = h_percentile(&st->h, 0.99);
    int complete = (!no_pub || st->external) && st->expected > 0 && st->delivered == st->expected &&
                   st->pub_errors == 0 && !st->pub_backlog;
    st->pass = complete && p99 <= (uint64_t)(p99_limit_ms * 1000);
    st->ok = complete && p99 <= (uint64_t)(ramp_p99_ms * 1000);
    double srv_cpu = st->srv1.cpu_s - st->srv0.cpu_s, win = st->t_end - st->t0;
    fprintf(stderr,
            "step %d: rate %.4g/s published %llu expected %llu delivered %llu (%.1f/s) p50 %.2fms p99 %.2fms "
            "max %.2fms srv_cpu %.0f%% gen_cpu %.0f%% %s\n",
            k, st->rate, (unsigned long long)st->published, (unsigned long long)st->expected,
            (unsigned long long)st->delivered, st->delivered / win, h_percentile(&st->h, 0.5) / 1e3, p99 / 1e3,
            st->h.max / 1e3, 100 * srv_cpu / win, 100 * (st->gen_cpu1 - st->gen_cpu0) / win,
            st->pass ? "PASS" : "FAIL");
}

/* --- the sequence of steps --- */
static double run_end;
static int subs0;

static int passed_at(double rate, int n) {
    for (int j = 0; j < n; j++)
        if (steps[j].pass && steps[j].rate == rate) return 1;
    return 0;
}

/* Time left, a publisher, and no subscriber lost: another step can run. */
static int can_go_on(int k) {
    if (k >= MAX_STEPS) return 0;
    if (mono_s() + gap_s + step_s + drain_s > run_end) return 0;
    if (n_ready_pubs == 0 && !no_pub) return 0;
    if (n_ready_subs < subs0) {
        fprintf(stderr, "%d subscribers lost: no more steps\n", subs0 - n_ready_subs);
        return 0;
    }
    return 1;
}

/* After a failed step: let the server catch up (no delivery for 1 s) before the next one. */
static void recover(void) {
    double rend = mono_s() + recover_s;
    while (mono_s() < rend && now_us() - last_delivery < 1000000) poll_once(10);
}

/* Run a step at `rate` as step *k; with --confirm, a failed one (strict: by the pass criterion,
   else by the ramp's) runs once more and that second result is the one that counts. Returns the
   index of the step that counts, or -1. */
static int measure(int *k, double rate, int strict) {
    int idx = -1;
    for (int attempt = 0; attempt < 2 && *k < MAX_STEPS; attempt++) {
        if (attempt && !can_go_on(*k)) break;
        steps[*k].rate = rate;
        steps[*k].retry = attempt;
        if (*k == 0)
            for (int i = 0; i < n_slow; i++)
                if (conns[i].fd >= 0) { conns[i].stalled = 1; update_events(&conns[i]); }
        run_step(*k);
        idx = (*k)++;
        int failed = strict ? !steps[idx].pass : !steps[idx].ok;
        /* a ramp with a looser limit than the pass limit is not confirmed: refine retests */
        if (!strict && ramp_p99_ms > p99_limit_ms) failed = 0;
        if (!steps[idx].pass) recover();
        poll_for(gap_s);
        if (!failed || !confirm) break;
    }
    return idx;
}

/* --- --control: steps from stdin, events (JSON lines) to stdout --- */
static char ctl_buf[4096];
static size_t ctl_len = 0;
static int ctl_eof = 0;

static void control_read(void) {
    for (;;) {
        if (ctl_len >= sizeof ctl_buf - 1) ctl_len = 0; /* a line too long for any command: dropped */
        ssize_t n = read(0, ctl_buf + ctl_len, sizeof ctl_buf - 1 - ctl_len);
        if (n > 0) { ctl_len += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || errno != EAGAIN) { /* the runner is gone: finish */
            ctl_eof = 1;
            epoll_ctl(ep_fd, EPOLL_CTL_DEL, 0, NULL);
        }
        return;
    }
}

/* The next complete command line (into line), or 0. */
static int control_line(char *line, size_t cap) {
    char *nl = memchr(ctl_buf, '\n', ctl_len);
    if (!nl) return 0;
    size_t n = (size_t)(nl - ctl_buf), rest = ctl_len - n - 1;
    if (n >= cap) n = cap - 1;
    memcpy(line, ctl_buf, n);
    line[n] = 0;
    memmove(ctl_buf, nl + 1, rest);
    ctl_len = rest;
    return 1;
}

/* Commands, one per line:
 *   step RATE SECONDS DRAIN EXTERNAL  a step (as --rates has them) publishing RATE/s for SECONDS,
 *       waiting up to DRAIN s for the stragglers, each subscriber also expecting EXTERNAL
 *       messages of this step from elsewhere (the runner publishes them, with "s":<step>, once
 *       every generator printed {"event":"started","step":K}); prints {"event":"step",...}
 *   hold SECONDS  serve the connections (pings) for SECONDS; prints {"event":"held",...}
 *   quit (or the end of stdin)  close everything, write --out */
static void control_loop(void) {
    char line[512];
    for (;;) {
        while (control_line(line, sizeof line)) {
            double rate, secs, drain, hold;
            unsigned long long external;
            if (sscanf(line, "step %lf %lf %lf %llu", &rate, &secs, &drain, &external) == 4) {
                if (n_steps >= MAX_STEPS) {
                    printf("{\"event\":\"error\",\"error\":\"more than %d steps\"}\n", MAX_STEPS);
                    fflush(stdout);
                    continue;
                }
                int k = n_steps++;
                step_s = secs;
                drain_s = drain;
                steps[k].rate = rate;
                steps[k].external = external;
                run_step(k);
                if (!steps[k].pass) recover();
                printf("{\"event\":\"step\",\"ready_subs\":%d,\"ready_pubs\":%d,\"closes\":", n_ready_subs,
                       n_ready_pubs);
                print_closes(stdout);
                printf(",\"data\":");
                print_step(stdout, k);
                printf("}\n");
            } else if (sscanf(line, "hold %lf", &hold) == 1) {
                uint64_t pings0 = pings;
                poll_for(hold);
                printf("{\"event\":\"held\",\"seconds\":%.3f,\"pings\":%llu,\"ready_subs\":%d,\"closes\":", hold,
                       (unsigned long long)(pings - pings0), n_ready_subs);
                print_closes(stdout);
                printf("}\n");
            } else if (!strcmp(line, "quit")) {
                return;
            } else {
                printf("{\"event\":\"error\",\"error\":\"unknown command\"}\n");
            }
            fflush(stdout);
        }
        if (ctl_eof) return;
        poll_once(50);
    }
}

/* --- output --- */
static void print_hist(FILE *f, const hist_t *h) {
    fprintf(f, "{\"n\":%llu,\"p50\":%llu,\"p90\":%llu,\"p99\":%llu,\"p999\":%llu,\"max\":%llu,\"mean\":%.1f}",
            (unsigned long long)h->n, (unsigned long long)h_percentile(h, 0.5),
            (unsigned long long)h_percentile(h, 0.9), (unsigned long long)h_percentile(h, 0.99),
            (unsigned long long)h_percentile(h, 0.999), (unsigned long long)h->max, h->n ? h->sum / h->n : 0.0);
}

/* How connections ended so far: {"<close code>" or "<how>": count} */
static void print_closes(FILE *f) {
    fprintf(f, "{");
    for (int i = 0; i < n_codes; i++) {
        int code = codes[i][0];
        if (code >= 0) fprintf(f, "%s\"%d\":%d", i ? "," : "", code, codes[i][1]);
        else fprintf(f, "%s\"%s\":%d", i ? "," : "", HOW_NAMES[-code], codes[i][1]);
    }
    fprintf(f, "}");
}

/* --hist: the non-zero buckets, [highest value, count], to merge runs of several processes */
static void print_buckets(FILE *f, const hist_t *h) {
    fprintf(f, ",\"buckets\":[");
    int first = 1;
    for (int i = 0; i < H_BUCKETS; i++)
        if (h->counts[i]) {
            fprintf(f, "%s[%llu,%llu]", first ? "" : ",", (unsigned long long)h_upper(i),
                    (unsigned long long)h->counts[i]);
            first = 0;
        }
    fprintf(f, "]");
}

static const char *mode_name(int m) {
    return m == M_CENTRIFUGO ? "centrifugo" : m == M_CENTRIFUGO_PB ? "centrifugo-pb" : m == M_PLAIN ? "plain" : "socketio";
}

static void print_proc(FILE *f, const char *name, const procstat_t *p) {
    fprintf(f, "\"%s\":{\"cpu_s\":%.3f,\"rss_kb\":%ld,\"hwm_kb\":%ld,\"alive\":%d}", name, p->cpu_s, p->rss_kb,
            p->hwm_kb, p->alive);
}

static void print_step(FILE *f, int k) {
    step_t *st = &steps[k];
    double win = st->t_end - st->t0, scpu = st->srv1.cpu_s - st->srv0.cpu_s;
    double span = st->last_us > st->first_us ? (st->last_us - st->first_us) / 1e6 : win;
    fprintf(f, "{\"step\":%d,\"rate\":%.3f,\"window_s\":%.3f,\"drain_s\":%.3f,\"published\":%llu,"
               "\"pub_acks\":%llu,\"pub_errors\":%llu,\"pub_backlog\":%d,\"expected\":%llu,\"delivered\":%llu,"
               "\"late\":%llu,\"slow_delivered\":%llu,\"deliveries_per_s\":%.1f,\"delivery_span_s\":%.3f,"
               "\"offered_deliveries_per_s\":%.1f,\"latency_us\":",
            k, st->rate, win, st->t_drained - st->t_end, (unsigned long long)st->published,
            (unsigned long long)st->pub_acks, (unsigned long long)st->pub_errors, st->pub_backlog,
            (unsigned long long)st->expected, (unsigned long long)st->delivered, (unsigned long long)st->late,
            (unsigned long long)st->slow_delivered, win > 0 ? st->delivered / win : 0.0, span,
            win > 0 ? st->expected / win : 0.0);
    print_hist(f, &st->h);
    fprintf(f, ",\"server_cpu_s\":%.3f,\"server_cpu_pct\":%.1f,\"server_rss_kb\":%ld,\"server_hwm_kb\":%ld,"
               "\"server_alive\":%d,\"gen_cpu_s\":%.3f,\"gen_cpu_pct\":%.1f,\"retry\":%d,\"ok\":%s,\"pass\":%s,\"cores\":",
            scpu, win > 0 ? 100 * scpu / win : 0.0, st->srv1.rss_kb, st->srv1.hwm_kb, st->srv1.alive,
            st->gen_cpu1 - st->gen_cpu0, win > 0 ? 100 * (st->gen_cpu1 - st->gen_cpu0) / win : 0.0,
            st->retry, st->ok ? "true" : "false", st->pass ? "true" : "false");
    cpustat_print(f, &st->cpu0, &st->cpu1);
    if (dump_hist) print_buckets(f, &st->h);
    fprintf(f, "}");
}

static int parse_mode(const char *s) {
    if (!strcmp(s, "centrifugo")) return M_CENTRIFUGO;
    if (!strcmp(s, "centrifugo-pb")) return M_CENTRIFUGO_PB;
    if (!strcmp(s, "plain")) return M_PLAIN;
    if (!strcmp(s, "socketio")) return M_SOCKETIO;
    fprintf(stderr, "unknown mode %s\n", s);
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: wsbench --port P [options]\n"
            "  --host H (127.0.0.1)  --path /p/%%s (%%s = channel)  --mode centrifugo|centrifugo-pb|plain|socketio\n"
            "  --protobuf (--mode centrifugo: Protobuf, subprotocol centrifuge-protobuf; = --mode centrifugo-pb)\n"
            "  --pub-host H --pub-port P --pub-path /pub --pub-mode M --pub-conns K (default: as subscribers, 1)\n"
            "  --conns N (100)  --channels C (1)  --prefix bench  --size BYTES (128)\n"
            "  --rates r1,r2,..  |  --ramp start:factor:max (implies nothing; add --stop-on-fail)\n"
            "  --step S (5)  --drain S (3)  --settle S (1)  --gap S (1)  --p99-limit-ms MS (50)\n"
            "  --stop-on-fail  --refine N (bisection steps after the ramp)  --confirm (rerun a failed step)\n"
            "  --ramp-p99-ms MS (the ramp goes on while everything is delivered with p99 <= MS; default the limit)\n"
            "  --recover S (20: wait for the server to catch up after a failed step)\n"
            "  --inflight K (100 handshakes at once)  --connect-timeout S (60)  --retries N (3)\n"
            "  --hold S (idle: no publisher, hold the connections S seconds)\n"
            "  --slow K --slow-rcvbuf B (4096) --slow-resume S (3)  --no-pub  --delack (TCP_QUICKACK off)\n"
            "  --server-pid PID (repeatable)  --max-seconds S (600)  --out FILE (default stdout)\n"
            "  --bind ADDR (source address of every socket)  --hist (steps list their histogram buckets)\n"
            "  --personal PATTERN (subscriber i's channel: PATTERN with %%d = --first + i; publishers pick\n"
            "    random ones)  --first N (0)  --also CHANNEL (every subscriber joins it too; JSON only)\n"
            "  --control (steps from stdin: 'step RATE SECONDS DRAIN EXTERNAL', 'hold SECONDS', 'quit';\n"
            "    events as JSON lines on stdout; needs --out)\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"path", 1, 0, 'P'}, {"mode", 1, 0, 'm'},
        {"pub-host", 1, 0, 1}, {"pub-port", 1, 0, 2}, {"pub-path", 1, 0, 3}, {"pub-mode", 1, 0, 4},
        {"pub-conns", 1, 0, 5}, {"conns", 1, 0, 'n'}, {"channels", 1, 0, 'c'}, {"prefix", 1, 0, 6},
        {"size", 1, 0, 's'}, {"rates", 1, 0, 'r'}, {"ramp", 1, 0, 7}, {"step", 1, 0, 8},
        {"drain", 1, 0, 9}, {"settle", 1, 0, 10}, {"gap", 1, 0, 11}, {"stop-on-fail", 0, 0, 12},
        {"p99-limit-ms", 1, 0, 13}, {"inflight", 1, 0, 14}, {"connect-timeout", 1, 0, 15},
        {"hold", 1, 0, 16}, {"slow", 1, 0, 17}, {"slow-rcvbuf", 1, 0, 18}, {"slow-resume", 1, 0, 19},
        {"no-pub", 0, 0, 20}, {"server-pid", 1, 0, 21}, {"max-seconds", 1, 0, 22}, {"out", 1, 0, 'o'},
        {"retries", 1, 0, 23}, {"refine", 1, 0, 24}, {"recover", 1, 0, 25}, {"delack", 0, 0, 26}, {"confirm", 0, 0, 27}, {"help", 0, 0, 'H'}, {"ramp-p99-ms", 1, 0, 28}, {"protobuf", 0, 0, 29},
        {"bind", 1, 0, 30}, {"personal", 1, 0, 31}, {"first", 1, 0, 32}, {"also", 1, 0, 33},
        {"control", 0, 0, 34}, {"hist", 0, 0, 35}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "h:p:P:m:n:c:s:r:o:", opts, NULL)) != -1) {
        switch (o) {
        case 'h': sub_ep.host = optarg; break;
        case 'p': sub_ep.port = atoi(optarg); break;
        case 'P': sub_ep.path = optarg; break;
        case 'm': sub_ep.mode = parse_mode(optarg); break;
        case 1: pub_ep.host = optarg; break;
        case 2: pub_ep.port = atoi(optarg); break;
        case 3: pub_ep.path = optarg; break;
        case 4: pub_ep.mode = parse_mode(optarg); break;
        case 5: n_pubs = atoi(optarg); break;
        case 'n': n_conns = atoi(optarg); break;
        case 'c': n_channels = atoi(optarg); break;
        case 6: chan_prefix = optarg; break;
        case 's': msg_size = atoi(optarg); break;
        case 'r': {
            char *s = strdup(optarg), *tok, *save = NULL;
            for (tok = strtok_r(s, ",", &save); tok && n_steps < MAX_STEPS; tok = strtok_r(NULL, ",", &save))
                rates[n_steps++] = atof(tok);
            break;
        }
        case 7: {
            double a, f, m;
            if (sscanf(optarg, "%lf:%lf:%lf", &a, &f, &m) != 3 || a <= 0 || f <= 1) usage();
            for (double r = a; r <= m * 1.0001 && n_steps < MAX_STEPS; r *= f) rates[n_steps++] = r;
            break;
        }
        case 8: step_s = atof(optarg); break;
        case 9: drain_s = atof(optarg); break;
        case 10: settle_s = atof(optarg); break;
        case 11: gap_s = atof(optarg); break;
        case 12: stop_on_fail = 1; break;
        case 13: p99_limit_ms = atof(optarg); break;
        case 14: inflight_max = atoi(optarg); break;
        case 15: connect_timeout_s = atof(optarg); break;
        case 16: hold_s = atof(optarg); break;
        case 17: n_slow = atoi(optarg); break;
        case 18: slow_rcvbuf = atoi(optarg); break;
        case 19: slow_resume_s = atof(optarg); break;
        case 20: no_pub = 1; break;
        case 21: if (n_server_pids < 16) server_pids[n_server_pids++] = atoi(optarg); break;
        case 22: max_run_s = atof(optarg); break;
        case 23: max_retries = atoi(optarg); break;
        case 24: refine_n = atoi(optarg); stop_on_fail = 1; break;
        case 25: recover_s = atof(optarg); break;
        case 26: delack = 1; break;
        case 27: confirm = 1; break;
        case 28: ramp_p99_ms = atof(optarg); break;
        case 29: protobuf = 1; break;
        case 30: bind_addr = optarg; break;
        case 31: personal = optarg; break;
        case 32: first_index = atoi(optarg); break;
        case 33: also_channel = optarg; break;
        case 34: control = dump_hist = 1; break;
        case 35: dump_hist = 1; break;
        case 'o': out_path = optarg; break;
        default: usage();
        }
    }
    if (!sub_ep.port) usage();
    if (protobuf) { /* the subscribers speak Protobuf (and the publisher too, unless --pub-mode says) */
        if (sub_ep.mode != M_CENTRIFUGO && sub_ep.mode != M_CENTRIFUGO_PB) {
            fprintf(stderr, "--protobuf needs --mode centrifugo\n");
            exit(2);
        }
        sub_ep.mode = M_CENTRIFUGO_PB;
    }
    if (personal) {
        const char *d = strstr(personal, "%d");
        if (!d || strchr(personal, '%') != d || strchr(d + 1, '%')) {
            fprintf(stderr, "--personal needs one %%d and no other %%\n");
            exit(2);
        }
    }
    if (also_channel && sub_ep.mode != M_CENTRIFUGO) {
        fprintf(stderr, "--also needs --mode centrifugo (JSON)\n");
        exit(2);
    }
    if (control && (!out_path || hold_s >= 0)) {
        fprintf(stderr, "--control needs --out (stdout carries its events) and no --hold\n");
        exit(2);
    }
    if (bind_addr) {
        struct in_addr a;
        if (inet_pton(AF_INET, bind_addr, &a) != 1) {
            fprintf(stderr, "--bind needs an IPv4 address\n");
            exit(2);
        }
    }
    if (!pub_ep.host) pub_ep.host = sub_ep.host;
    if (!pub_ep.port) pub_ep.port = sub_ep.port;
    if (!pub_ep.path) pub_ep.path = sub_ep.path;
    if (pub_ep.mode < 0) pub_ep.mode = sub_ep.mode;
    if (hold_s >= 0) no_pub = 1; /* idle connections: no publisher */
    if (no_pub) n_pubs = 0;
    if (n_steps == 0 && hold_s < 0) { rates[0] = 10; n_steps = 1; }
    if (hold_s >= 0) n_steps = 0;
    if (msg_size < 64) msg_size = 64;
    if (ramp_p99_ms < p99_limit_ms) ramp_p99_ms = p99_limit_ms;

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    rng_state ^= (uint64_t)getpid() << 20 ^ now_us();
    alarm((unsigned)max_run_s + 5); /* a hard stop, whatever happens */

    if (personal) n_channels = n_conns;
    n_total = n_conns + n_pubs;
    conns = calloc((size_t)n_total, sizeof *conns);
    retry_q = calloc((size_t)n_total, sizeof *retry_q);
    chan_ready = calloc((size_t)n_channels, sizeof *chan_ready);
    chan_names = calloc((size_t)n_channels, sizeof *chan_names);
    scratch = malloc(scratch_cap);
    msgbuf = malloc((size_t)msg_size + 1024 + PB_HEADROOM);
    if (!conns || !retry_q || !chan_ready || !chan_names || !scratch || !msgbuf) die("calloc");
    for (int i = 0; i < n_channels; i++) {
        char name[256];
        if (personal) snprintf(name, sizeof name, personal, first_index + i);
        else if (n_channels == 1) snprintf(name, sizeof name, "%s", chan_prefix);
        else snprintf(name, sizeof name, "%s-%d", chan_prefix, i);
        chan_names[i] = strdup(name);
    }
    for (int i = 0; i < n_total; i++) {
        conn_t *c = &conns[i];
        c->fd = -1;
        c->idx = i;
        c->is_pub = i >= n_conns;
        c->ep = c->is_pub ? &pub_ep : &sub_ep;
        c->channel = c->is_pub ? 0 : i % n_channels;
        c->slow = !c->is_pub && i < n_slow;
        c->close_code = -1;
    }
    ep_fd = epoll_create1(EPOLL_CLOEXEC);
    if (ep_fd < 0) die("epoll_create1");
    if (control) {
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = CONTROL_TAG};
        if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, 0, &e) < 0) die("epoll_ctl stdin");
    }

    double cpu_user0, cpu_sys0;
    self_cpu_s(&cpu_user0, &cpu_sys0);
    procstat_t srv_base, srv_connected, srv_held;
    memset(&srv_held, 0, sizeof srv_held);
    procs_read(server_pids, n_server_pids, &srv_base);

    /* connect everything */
    t_start = mono_s();
    uint64_t t_start_wall = now_us();
    double deadline = t_start + connect_timeout_s;
    while (mono_s() < deadline && n_ready_subs + n_ready_pubs + n_failed < n_total) poll_once(5);
    double t_connected = mono_s();
    double gen_cpu_connect = self_cpu_s(NULL, NULL) - (cpu_user0 + cpu_sys0);
    int connect_timed_out = n_ready_subs + n_ready_pubs + n_failed < n_total;
    fprintf(stderr, "connected %d/%d subscribers, %d/%d publishers, %d failed in %.2fs\n", n_ready_subs, n_conns,
            n_ready_pubs, n_pubs, n_failed, t_connected - t_start);
    /* those still connecting are given up */
    for (int i = 0; i < n_total; i++) {
        conn_t *c = &conns[i];
        if (c->state != ST_READY && c->state != ST_FAILED && c->state != ST_CLOSED) {
            shutting_down = 1;
            if (c->fd >= 0) conn_close(c, HOW_LOCAL, 0);
            else n_failed++;
            shutting_down = 0;
            c->state = ST_FAILED;
        }
    }
    retry_len = 0;
    next_new = n_total;
    poll_for(settle_s);
    procs_read(server_pids, n_server_pids, &srv_connected);

    if (control) {
        /* wall-clock times, so that a runner can add up several processes' ramps */
        printf("{\"event\":\"connected\",\"ready\":%d,\"ready_subs\":%d,\"ready_pubs\":%d,\"failed\":%d,"
               "\"timed_out\":%d,\"start_us\":%llu,\"last_ready_us\":%llu,\"gen_cpu_s\":%.3f,\"latency_us\":",
               n_ever_ready, n_ready_subs, n_ready_pubs, n_failed, connect_timed_out,
               (unsigned long long)t_start_wall,
               (unsigned long long)(t_start_wall + (uint64_t)((t_last_ready > t_start ? t_last_ready - t_start : 0) * 1e6)),
               gen_cpu_connect);
        print_hist(stdout, &connect_hist);
        printf("}\n");
        fflush(stdout);
        n_steps = 0; /* the steps are the runner's, numbered from 0 */
        control_loop();
    } else if (hold_s >= 0) {
        poll_for(hold_s);
        procs_read(server_pids, n_server_pids, &srv_held);
    } else if (n_pubs > 0 && n_ready_pubs == 0) {
        fprintf(stderr, "no publisher connection: no steps run\n");
    } else {
        run_end = t_start + max_run_s;
        subs0 = n_ready_subs;
        int k = 0, n_ramp = n_steps;
        n_steps = 0;
        /* ramp: rates in order while the steps are "ok" (everything delivered, p99 <= the ramp
           limit, which is the pass limit unless --ramp-p99-ms says more) */
        for (int i = 0; i < n_ramp && k < MAX_STEPS; i++) {
            int idx = measure(&k, rates[i], 0);
            if (idx < 0) break;
            if (stop_on_fail && !steps[idx].ok) break;
            if (!can_go_on(k)) break;
        }
        /* refine: bisect between the highest passing rate and the lowest failing one above it */
        for (int r = 0; r < refine_n && k < MAX_STEPS && can_go_on(k); r++) {
            double lo = 0, hi = 0;
            for (int j = 0; j < k; j++)
                if (steps[j].pass && steps[j].rate > lo) lo = steps[j].rate;
            for (int j = 0; j < k; j++)
                if (!steps[j].pass && steps[j].rate > lo && (hi == 0 || steps[j].rate < hi) &&
                    !passed_at(steps[j].rate, k))
                    hi = steps[j].rate;
            if (hi == 0) break; /* nothing failed above the best pass */
            double rate = lo > 0 ? sqrt(lo * hi) : hi / 2;
            if (lo > 0 && hi / lo < 1.05) break;
            if (rate * step_s < 1) break; /* not even one message in a step */
            if (measure(&k, rate, 1) < 0) break;
        }
        n_steps = k;
    }

    /* slow clients: read again, and see how the server treated them */
    if (n_slow > 0) {
        for (int i = 0; i < n_slow; i++)
            if (conns[i].fd >= 0) { conns[i].stalled = 0; update_events(&conns[i]); }
        double end = mono_s() + slow_resume_s;
        while (mono_s() < end) {
            int open = 0;
            for (int i = 0; i < n_slow; i++) open += conns[i].fd >= 0;
            if (!open) break;
            poll_once(10);
        }
        for (int i = 0; i < n_slow; i++) {
            conns[i].slow_how = conns[i].fd >= 0 ? HOW_OPEN : conns[i].how;
            conns[i].slow_code = conns[i].fd >= 0 ? -1 : conns[i].close_code;
        }
    }
    double gen_user, gen_sys;
    self_cpu_s(&gen_user, &gen_sys);

    /* close: send a close frame to everyone, give the servers a moment */
    shutting_down = 1;
    for (int i = 0; i < n_total; i++) {
        conn_t *c = &conns[i];
        if (c->fd >= 0 && c->state == ST_READY) {
            c->stalled = 0;
            ws_send(c, 8, "\x03\xe8", 2);
        }
    }
    double cend = mono_s() + 2;
    while (mono_s() < cend) {
        int open = 0;
        for (int i = 0; i < n_total && !open; i++) open = conns[i].fd >= 0;
        if (!open) break;
        poll_once(10);
    }
    for (int i = 0; i < n_total; i++)
        if (conns[i].fd >= 0) {
            struct linger lg = {1, 0};
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
            conns[i].fd = -1;
        }

    /* report */
    FILE *f = out_path ? fopen(out_path, "w") : stdout;
    if (!f) die("fopen out");
    fprintf(f, "{\"tool\":\"wsbench\",\"config\":{\"host\":\"%s\",\"port\":%d,\"path\":\"%s\",\"mode\":\"%s\","
               "\"pub_port\":%d,\"pub_path\":\"%s\",\"pub_mode\":\"%s\",\"pub_conns\":%d,\"conns\":%d,"
               "\"channels\":%d,\"size\":%d,\"step_s\":%.3f,\"drain_s\":%.3f,\"p99_limit_ms\":%.3f,"
               "\"ramp_p99_ms\":%.3f,\"slow\":%d,\"hold_s\":%.3f},\n",
            sub_ep.host, sub_ep.port, sub_ep.path, mode_name(sub_ep.mode), pub_ep.port, pub_ep.path,
            mode_name(pub_ep.mode), n_pubs, n_conns, n_channels, msg_size, step_s, drain_s, p99_limit_ms, ramp_p99_ms, n_slow,
            hold_s);
    double ct = (t_last_ready > t_start ? t_last_ready : t_connected) - t_start;
    fprintf(f, "\"connect\":{\"ready\":%d,\"failed\":%d,\"timed_out\":%d,\"seconds\":%.3f,\"rate\":%.1f,"
               "\"gen_cpu_s\":%.3f,\"latency_us\":",
            n_ever_ready, n_failed, connect_timed_out,
            ct, ct > 0 ? n_ever_ready / ct : 0.0, gen_cpu_connect);
    print_hist(f, &connect_hist);
    fprintf(f, "},\n\"server\":{");
    print_proc(f, "baseline", &srv_base);
    fprintf(f, ",");
    print_proc(f, "connected", &srv_connected);
    fprintf(f, ",");
    print_proc(f, "held", &srv_held);
    fprintf(f, "},\n\"steps\":[");
    for (int k = 0; k < n_steps; k++) {
        fprintf(f, "%s\n", k ? "," : "");
        print_step(f, k);
    }
    fprintf(f, "],\n\"slow\":[");
    for (int i = 0; i < n_slow; i++) {
        conn_t *c = &conns[i];
        fprintf(f, "%s{\"how\":\"%s\",\"close_code\":%d,\"delivered\":%llu}", i ? "," : "",
                c->state == ST_FAILED ? "failed" : HOW_NAMES[c->slow_how], c->slow_code,
                (unsigned long long)c->delivered);
    }
    fprintf(f, "],\n\"closes\":");
    print_closes(f);
    fprintf(f, ",\"unexpected_msgs\":%llu,\"pub_echo\":%llu,\"bad_step\":%llu,\"pings\":%llu,"
               "\"gen_cpu_user_s\":%.3f,\"gen_cpu_sys_s\":%.3f,\"wall_s\":%.3f}\n",
            (unsigned long long)unexpected_msgs, (unsigned long long)pub_echo, (unsigned long long)bad_step,
            (unsigned long long)pings,
            gen_user - cpu_user0, gen_sys - cpu_sys0, mono_s() - t_start);
    if (f != stdout) fclose(f);
    return 0;
}
