/*
 * loadgen.c - closed-loop load generator for AsyncAProto servers (and, for
 * comparison, HTTP/1.1 keep-alive servers).
 *
 * What it measures: completed request/reply pairs per second, and the latency
 * of each pair: CLOCK_MONOTONIC time from the moment a request is handed to
 * the connection's output buffer (== sent, unless the socket is full) to the
 * moment the last byte of its reply is read.  In reconnect mode the latency
 * runs from connect() to the reply, as the connect is part of every request.
 *
 * How: one thread, epoll (level-triggered), non-blocking TCP_NODELAY sockets.
 *   aproto    C connections, each keeps P request frames in flight; every
 *             reply (parsed by its Content-Length header) frees a slot that
 *             is refilled at once.  Replies come in order, so a ring of send
 *             timestamps per connection gives each reply its latency.
 *   http      the same closed loop over HTTP/1.1 keep-alive with pipelining
 *             depth P; responses are parsed by status line + Content-Length.
 *   reconnect C clients, each loops: connect, send one frame, read one reply
 *             frame, close (one request per connection).
 * Latencies go into a fixed log-linear histogram (128 linear sub-buckets per
 * power of two of nanoseconds: < 0.8 % error, 1 ns .. 34 s).  Only replies
 * completed inside the measured window (after --warmup, for --duration) count.
 * The hot path does no malloc and no stdio; the result is ONE JSON line.
 * errors: reply != --expect-file, a "status": "failure" payload (JSON or
 * MessagePack), HTTP non-2xx, a dropped / garbled / 10 s silent connection.
 * connect_errors: failed or timed-out connects (retried every 10 ms).
 * Exit 0 when it ran, 2 on bad usage or if no connection was ever made.
 *
 * Build: cc -O2 -o bench/.build/loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000ULL
#define NS_PER_MS 1000000ULL
#define IDLE_NS (10 * NS_PER_S)        /* no byte for this long: error + reconnect */
#define RETRY_NS (10 * NS_PER_MS)      /* back-off after a failed connect */
#define SCAN_NS (10 * NS_PER_MS)       /* timer scan period */
#define MAX_FRAME (64u << 20)          /* larger replies are treated as garbage */
#define HDR_MAX 65536                  /* longest HTTP response head accepted */
#define IN_INIT 16384

enum { M_APROTO, M_HTTP, M_RECONNECT };
enum { S_WAIT, S_CONNECTING, S_OPEN };

typedef struct {
    int fd, state, evmask;
    uint32_t gen;                      /* guards against stale epoll events */
    char *out; size_t olen, ooff, ocap; /* unsent request bytes */
    char *in; size_t ilen, icap;       /* received, not yet parsed bytes */
    uint64_t *ts; unsigned th, tn;     /* ring of send times: head, count */
    uint64_t t0, last_rx, retry_at;    /* connect start, last byte, retry time */
} conn_t;

/* ---- settings and global state ------------------------------------------ */
static int mode = M_APROTO, nconn = 1, pipeline = 1, hsize = 4;
static double duration = -1, warmup = 0, connect_timeout = 5;
static struct sockaddr_storage peer; static socklen_t peerlen;
static char *req, *expect; static size_t req_len, expect_len;
static conn_t *conns; static int epfd, ever_connected;
static uint64_t warm_ns, end_ns;
static uint64_t n_req, n_err, n_cerr, max_ns;
static int last_cerrno;                /* why the last connect failed */

/* ---- histogram ------------------------------------------------------------ */
#define SUB_BITS 7
#define SUB (1u << SUB_BITS)
#define HMAX_MSB 34
#define NBUCKETS ((HMAX_MSB - SUB_BITS + 2) * SUB)
static uint64_t hist[NBUCKETS];

static inline unsigned hidx(uint64_t v) {
    if (v >> (HMAX_MSB + 1)) v = (1ULL << (HMAX_MSB + 1)) - 1;
    if (v < SUB) return (unsigned)v;
    unsigned shift = (63 - __builtin_clzll(v)) - SUB_BITS;
    return shift * SUB + (unsigned)(v >> shift);
}
static uint64_t hupper(unsigned i) {    /* highest value that maps to bucket i */
    if (i < 2 * SUB) return i;
    unsigned shift = i / SUB - 1;
    return (((uint64_t)(i - shift * SUB) + 1) << shift) - 1;
}
static double pct_us(double p) {
    if (!n_req) return 0;
    uint64_t want = (uint64_t)(p * (double)n_req + 0.999999), cum = 0;
    if (want < 1) want = 1;
    for (unsigned i = 0; i < NBUCKETS; i++)
        if ((cum += hist[i]) >= want) {
            uint64_t v = hupper(i);
            return (v > max_ns ? max_ns : v) / 1000.0;
        }
    return max_ns / 1000.0;
}

/* ---- helpers -------------------------------------------------------------- */
static inline uint64_t now_ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * NS_PER_S + (uint64_t)t.tv_nsec;
}
static inline int measuring(uint64_t now) { return now >= warm_ns && now < end_ns; }

static void die_usage(const char *msg) {
    if (msg) fprintf(stderr, "loadgen: %s\n", msg);
    fprintf(stderr,
        "usage: loadgen --host ADDR --port N --connections C --pipeline P --duration S\n"
        "               [--warmup S] --mode aproto|http|reconnect --request-file PATH\n"
        "               [--expect-file PATH] [--header-size 4] [--http-path /echo]\n"
        "               [--connect-timeout 5]\n");
    exit(2);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    size_t cap = 4096, n = 0; char *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;)
        if ((n += r) == cap && cap < MAX_FRAME) buf = realloc(buf, cap *= 2);
    fclose(f);
    if (!buf) { fprintf(stderr, "loadgen: out of memory\n"); exit(2); }
    *len = n; return buf;
}

static uint64_t get_be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* A reply whose payload says "status": "failure" (JSON or MessagePack). */
static int is_failure(const char *p, size_t n) {
    if (!memmem(p, n, "failure", 7)) return 0;
    return memmem(p, n, "\"status\":\"failure\"", 18) ||
           memmem(p, n, "\"status\": \"failure\"", 19) ||
           memmem(p, n, "\xa6status\xa7" "failure", 15);
}

static void set_mask(conn_t *c, int mask) {
    if (c->evmask == mask) return;
    struct epoll_event ev = { .events = (uint32_t)mask,
        .data.u64 = ((uint64_t)c->gen << 32) | (uint64_t)(c - conns) };
    epoll_ctl(epfd, c->evmask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev);
    c->evmask = mask;
}

/* ---- connection life cycle ------------------------------------------------ */
static void conn_start(conn_t *c, uint64_t now);

static void conn_close(conn_t *c) {
    if (c->fd >= 0) close(c->fd);          /* also leaves the epoll set */
    c->fd = -1; c->evmask = 0; c->gen++;
    c->olen = c->ooff = c->ilen = 0; c->th = c->tn = 0;
}

/* Drop the connection; count it; reconnect now or after a short back-off. */
static void conn_fail(conn_t *c, uint64_t now, int connect_error) {
    if (connect_error) last_cerrno = errno;
    conn_close(c);
    if (measuring(now)) { if (connect_error) n_cerr++; else n_err++; }
    c->state = S_WAIT;
    c->retry_at = now + (connect_error ? RETRY_NS : 0);
}

static inline void queue_req(conn_t *c, uint64_t now) {
    if (c->olen + req_len > c->ocap) {     /* compact: never more than P queued */
        memmove(c->out, c->out + c->ooff, c->olen - c->ooff);
        c->olen -= c->ooff; c->ooff = 0;
    }
    memcpy(c->out + c->olen, req, req_len);
    c->olen += req_len;
    c->ts[(c->th + c->tn++) % (unsigned)pipeline] = now;
}

static int flush(conn_t *c, uint64_t now) {
    while (c->ooff < c->olen) {
        ssize_t n = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (n > 0) { c->ooff += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_mask(c, EPOLLIN | EPOLLOUT);
            return 0;
        }
        conn_fail(c, now, 0);
        return -1;
    }
    c->ooff = c->olen = 0;
    set_mask(c, EPOLLIN);
    return 0;
}

static void on_connected(conn_t *c, uint64_t now) {
    c->state = S_OPEN; c->last_rx = now; ever_connected = 1;
    int n = mode == M_RECONNECT ? 1 : pipeline;
    for (int i = 0; i < n; i++) queue_req(c, now);
    flush(c, now);
}

static void conn_start(conn_t *c, uint64_t now) {
    c->t0 = now;
    c->fd = socket(peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { conn_fail(c, now, 1); return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&peer, peerlen) == 0) {
        on_connected(c, now);
    } else if (errno == EINPROGRESS) {
        c->state = S_CONNECTING;
        set_mask(c, EPOLLOUT);
    } else {
        conn_fail(c, now, 1);
    }
}

/* ---- reply handling ------------------------------------------------------- */
/* One reply is complete.  Returns 1 if the connection was replaced. */
static inline int reply_done(conn_t *c, const char *cmp, size_t cmp_len,
                             const char *body, size_t body_len, int bad, uint64_t now) {
    uint64_t t = mode == M_RECONNECT ? c->t0 : c->ts[c->th];
    if (mode != M_RECONNECT) { c->th = (c->th + 1) % (unsigned)pipeline; c->tn--; }
    if (measuring(now)) {
        uint64_t lat = now - t;
        n_req++; hist[hidx(lat)]++;
        if (lat > max_ns) max_ns = lat;
        if (bad || (expect && (cmp_len != expect_len || memcmp(cmp, expect, cmp_len)))
                || is_failure(body, body_len))
            n_err++;
    }
    if (mode == M_RECONNECT) { conn_close(c); conn_start(c, now); return 1; }
    queue_req(c, now);                          /* closed loop: refill the slot */
    return 0;
}

static int grow_in(conn_t *c, size_t need) {
    size_t cap = c->icap;
    while (cap < need) cap *= 2;
    char *p = realloc(c->in, cap);
    if (!p) return -1;
    c->in = p; c->icap = cap;
    return 0;
}

/* Parse complete frames from c->in.  -1: garbage, 1: replaced, 0: need more. */
static int parse_aproto(conn_t *c, uint64_t now) {
    size_t pos = 0; int r = 0;
    while (c->ilen - pos >= (size_t)hsize) {
        uint64_t clen = get_be((unsigned char *)c->in + pos, hsize);
        if (clen > MAX_FRAME || clen < 2) return -1;
        size_t flen = (size_t)hsize + (size_t)clen;
        if (c->ilen - pos < flen) {
            if (flen > c->icap && grow_in(c, flen)) return -1;
            break;
        }
        const char *f = c->in + pos;
        if (c->tn == 0 && mode != M_RECONNECT) return -1;   /* unasked reply */
        if ((r = reply_done(c, f, flen, f + hsize + 2, flen - hsize - 2, 0, now)))
            return r;
        pos += flen;
    }
    if (pos) { memmove(c->in, c->in + pos, c->ilen - pos); c->ilen -= pos; }
    return 0;
}

static int parse_http(conn_t *c, uint64_t now) {
    size_t pos = 0;
    while (pos < c->ilen) {
        const char *p = c->in + pos; size_t avail = c->ilen - pos;
        const char *he = memmem(p, avail, "\r\n\r\n", 4);
        if (!he) { if (avail > HDR_MAX) return -1; break; }
        size_t hlen = (size_t)(he - p) + 4;
        if (hlen < 14 || memcmp(p, "HTTP/1.", 7)) return -1;
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        uint64_t clen = 0;
        for (const char *l = (const char *)memchr(p, '\n', hlen) + 1; l < he;) {
            const char *nl = memchr(l, '\n', (size_t)(he + 2 - l));
            if (he - l >= 15 && !strncasecmp(l, "content-length:", 15)) {
                const char *d = l + 15;
                while (*d == ' ' || *d == '\t') d++;
                for (clen = 0; *d >= '0' && *d <= '9'; d++) clen = clen * 10 + (uint64_t)(*d - '0');
            } else if (he - l >= 18 && !strncasecmp(l, "transfer-encoding:", 18)) {
                return -1;                        /* chunked bodies: unsupported */
            }
            l = nl + 1;
        }
        if (clen > MAX_FRAME) return -1;
        size_t total = hlen + (size_t)clen;
        if (avail < total) {
            if (total > c->icap && grow_in(c, total)) return -1;
            break;
        }
        if (c->tn == 0) return -1;
        reply_done(c, p + hlen, (size_t)clen, p + hlen, (size_t)clen,
                   status < 200 || status > 299, now);
        pos += total;
    }
    if (pos) { memmove(c->in, c->in + pos, c->ilen - pos); c->ilen -= pos; }
    return 0;
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->icap - c->ilen < 4096 && grow_in(c, c->icap * 2)) {
            conn_fail(c, now_ns(), 0); return;
        }
        size_t space = c->icap - c->ilen;
        ssize_t n = recv(c->fd, c->in + c->ilen, space, 0);
        uint64_t now = now_ns();
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) { conn_fail(c, now, 0); return; }       /* EOF, reset, ... */
        c->ilen += (size_t)n; c->last_rx = now;
        int r = mode == M_HTTP ? parse_http(c, now) : parse_aproto(c, now);
        if (r < 0) { conn_fail(c, now, 0); return; }
        if (r > 0) return;                                  /* reconnect mode */
        if ((size_t)n < space) break;
    }
    flush(c, now_ns());
}

static void on_event(conn_t *c, uint32_t ev) {
    if (c->state == S_CONNECTING) {
        int err = 0; socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
        if (err) { errno = err; conn_fail(c, now_ns(), 1); }
        else if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c, now_ns());
        return;
    }
    if (c->state != S_OPEN) return;
    uint32_t gen = c->gen;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
    if ((ev & EPOLLOUT) && c->gen == gen && c->state == S_OPEN) flush(c, now_ns());
}

/* Every SCAN_NS: retries due, connect timeouts, silent connections. */
static void scan(uint64_t now) {
    uint64_t cto = (uint64_t)(connect_timeout * NS_PER_S);
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->state == S_WAIT && now >= c->retry_at) conn_start(c, now);
        else if (c->state == S_CONNECTING && now - c->t0 > cto) { errno = ETIMEDOUT; conn_fail(c, now, 1); }
        else if (c->state == S_OPEN && now - c->last_rx > IDLE_NS) conn_fail(c, now, 0);
    }
}

static void on_alarm(int sig) {
    (void)sig;
    static const char m[] = "loadgen: hard deadline reached, aborting\n";
    (void)!write(2, m, sizeof m - 1);
    _exit(3);
}

/* ---- main ----------------------------------------------------------------- */
int main(int argc, char **argv) {
    const char *host = NULL, *port = NULL, *reqf = NULL, *expf = NULL, *path = "/echo";
    static const struct option opts[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"connections", 1, 0, 'c'},
        {"pipeline", 1, 0, 'P'}, {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},
        {"mode", 1, 0, 'm'}, {"request-file", 1, 0, 'r'}, {"expect-file", 1, 0, 'e'},
        {"header-size", 1, 0, 's'}, {"http-path", 1, 0, 'u'},
        {"connect-timeout", 1, 0, 't'}, {"help", 0, 0, '?'}, {0, 0, 0, 0}};
    char *end;
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = optarg; break;
        case 'c': nconn = (int)strtol(optarg, &end, 10); if (*end) die_usage("bad --connections"); break;
        case 'P': pipeline = (int)strtol(optarg, &end, 10); if (*end) die_usage("bad --pipeline"); break;
        case 'd': duration = strtod(optarg, &end); if (*end) die_usage("bad --duration"); break;
        case 'w': warmup = strtod(optarg, &end); if (*end) die_usage("bad --warmup"); break;
        case 't': connect_timeout = strtod(optarg, &end); if (*end) die_usage("bad --connect-timeout"); break;
        case 's': hsize = (int)strtol(optarg, &end, 10); if (*end) die_usage("bad --header-size"); break;
        case 'r': reqf = optarg; break;
        case 'e': expf = optarg; break;
        case 'u': path = optarg; break;
        case 'm':
            if (!strcmp(optarg, "aproto")) mode = M_APROTO;
            else if (!strcmp(optarg, "http")) mode = M_HTTP;
            else if (!strcmp(optarg, "reconnect")) mode = M_RECONNECT;
            else die_usage("--mode must be aproto, http or reconnect");
            break;
        default: die_usage(NULL);
        }
    }
    if (optind < argc) die_usage("unexpected argument");
    if (!host || !port || !reqf) die_usage("--host, --port and --request-file are required");
    if (duration <= 0 || duration > 86400) die_usage("--duration must be > 0");
    if (warmup < 0 || warmup > 86400) die_usage("--warmup must be >= 0");
    if (connect_timeout <= 0 || connect_timeout > 3600) die_usage("--connect-timeout must be > 0");
    if (nconn < 1 || nconn > 1000000) die_usage("--connections must be >= 1");
    if (pipeline < 1 || pipeline > 65536) die_usage("--pipeline must be >= 1");
    if (hsize < 1 || hsize > 8) die_usage("--header-size must be 1..8");
    if (mode == M_RECONNECT) pipeline = 1;

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai) { fprintf(stderr, "loadgen: %s: %s\n", host, gai_strerror(gai)); exit(2); }
    memcpy(&peer, ai->ai_addr, ai->ai_addrlen); peerlen = ai->ai_addrlen;
    freeaddrinfo(ai);

    size_t body_len; char *body = read_file(reqf, &body_len);
    if (expf) expect = read_file(expf, &expect_len);
    if (mode == M_HTTP) {
        char head[1024];
        int hl = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", path, body_len);
        if (hl < 0 || hl >= (int)sizeof head) die_usage("--http-path too long");
        req_len = (size_t)hl + body_len;
        if (!(req = malloc(req_len))) exit(2);
        memcpy(req, head, (size_t)hl); memcpy(req + hl, body, body_len);
        free(body);
    } else {
        req = body; req_len = body_len;
        if (req_len < (size_t)hsize + 2 ||
            get_be((unsigned char *)req, hsize) != req_len - (size_t)hsize)
            die_usage("--request-file must hold exactly one frame (check --header-size)");
    }

    struct rlimit rl;                          /* one fd per connection */
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(warmup + duration) + 15);  /* hard bound, in case */

    if ((epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) { perror("epoll_create1"); exit(2); }
    if (!(conns = calloc((size_t)nconn, sizeof *conns))) exit(2);
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        c->fd = -1; c->ocap = (size_t)pipeline * req_len; c->icap = IN_INIT;
        c->out = malloc(c->ocap); c->in = malloc(c->icap);
        c->ts = malloc((size_t)pipeline * sizeof *c->ts);
        if (!c->out || !c->in || !c->ts) { fprintf(stderr, "loadgen: out of memory\n"); exit(2); }
    }

    uint64_t start = now_ns(), next_scan = start + SCAN_NS;
    uint64_t cto = (uint64_t)(connect_timeout * NS_PER_S);
    warm_ns = start + (uint64_t)(warmup * NS_PER_S);
    end_ns = warm_ns + (uint64_t)(duration * NS_PER_S);
    for (int i = 0; i < nconn; i++) conn_start(&conns[i], start);

    struct epoll_event evs[512];
    for (;;) {
        uint64_t now = now_ns();
        if (now >= end_ns) break;
        if (!ever_connected && now - start > cto) break;
        if (now >= next_scan) { scan(now); next_scan = now + SCAN_NS; }
        uint64_t left = end_ns - now;
        int to = left < SCAN_NS ? (int)(left / NS_PER_MS) + 1 : (int)(SCAN_NS / NS_PER_MS);
        int n = epoll_wait(epfd, evs, 512, to);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[(uint32_t)evs[i].data.u64];
            if ((uint32_t)(evs[i].data.u64 >> 32) != c->gen) continue;   /* stale */
            on_event(c, evs[i].events);
        }
    }

    if (!ever_connected) {               /* no result to report */
        fprintf(stderr, "loadgen: no connection to %s:%s could be made: %s\n",
                host, port, strerror(last_cerrno));
        return 2;
    }
    printf("{\"requests\": %llu, \"seconds\": %.3f, \"rps\": %.1f, \"errors\": %llu, "
           "\"connect_errors\": %llu, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
           "\"p999_us\": %.1f, \"max_us\": %.1f}\n",
           (unsigned long long)n_req, duration, (double)n_req / duration,
           (unsigned long long)n_err, (unsigned long long)n_cerr,
           pct_us(0.50), pct_us(0.90), pct_us(0.99), pct_us(0.999), max_ns / 1000.0);
    fflush(stdout);
    return 0;
}
