/*
 * loadgen: the closed-loop load generator of the reactor benchmark.
 *
 * The contract (arguments, modes, result line, exit status) is
 * bench/LOADGEN.md; bench/pyloadgen.py implements the same one in Python.
 *
 * One thread drives every connection through one epoll instance.  The run is
 * a set of "slots", each with exactly one request outstanding: a connection in
 * flight (crr), an open connection (rr, idle) or a datagram socket (dgram).
 * Client sockets are registered once, edge-triggered for both directions, so
 * the hot path never calls epoll_ctl(EPOLL_CTL_MOD).  Timeouts and the short
 * pause after a failure are handled by a periodic scan of all slots rather
 * than a timer per slot: a scan every few milliseconds costs little next to
 * tens of thousands of operations per second.
 *
 * http mode reuses the rr machinery with an HTTP/1.1 request and a response
 * parser (status line, Content-Length; no chunked or close-delimited bodies),
 * stops once --requests have been answered, and can run "probe" slots beside
 * the load: a fresh connection every --probe-interval, one request each,
 * timed from connect() to the last byte of the reply.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* Linux 4.2; older libc headers lack it */
#endif

#define NS_PER_US 1000LL
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
/* How often outstanding requests are checked against --timeout. */
#define SCAN_NS (10 * NS_PER_MS)
/* How long a slot rests after a failure before it reconnects, so that a
 * refusing or absent server cannot make the generator spin. */
#define BACKOFF_NS NS_PER_MS
#define MAX_EVENTS 256
#define MAX_ERROR_KINDS 64
#define STDIN_TOKEN UINT64_MAX /* epoll token of fd 0; slots use their index */
#define GREETING "Hello, world"
/* http: the longest response head accepted, and the body read buffer. */
#define HEAD_MAX 8192
#define BODY_CHUNK 65536
#define COUNT(array) ((int)(sizeof(array) / sizeof((array)[0])))

enum mode { MODE_CRR, MODE_RR, MODE_DGRAM, MODE_IDLE, MODE_HTTP };
enum transport { TR_TCP, TR_UNIX, TR_UDP, TR_UNIXDGRAM };

static const char *const mode_names[] = {"crr", "rr", "dgram", "idle", "http"};
static const char *const transport_names[] = {"tcp", "unix", "udp", "unixdgram"};

struct config {
    enum mode mode;
    enum transport transport;
    const char *address;
    long concurrency;
    double duration, warmup, timeout, hold;
    long message_size;
    bool line;             /* the request's last byte is a newline */
    long source_spread;
    const char *path;      /* http: the request target */
    long requests;         /* http: requests to send in all, 0 for no bound */
    double probe_interval; /* http: seconds between probes, 0 for none */
};

struct target {
    struct sockaddr_storage addr;
    socklen_t len;
};

enum slot_state {
    SLOT_CONNECTING, /* non-blocking connect() in progress */
    SLOT_EXCHANGING, /* request being sent or reply being read */
    SLOT_HOLDING,    /* idle mode: served, now kept open */
    SLOT_BACKOFF,    /* failed; reconnects at `deadline` */
    SLOT_DEAD,       /* no socket: not started yet, or failed for good (idle) */
};

struct slot {
    int fd;
    enum slot_state state;
    bool served; /* got at least one full reply (any connection of this slot) */
    size_t sent; /* bytes of the request written */
    size_t got;  /* bytes of the reply read and checked */
    int64_t started;  /* latency origin of the current exchange */
    int64_t deadline; /* timeout of the exchange, or end of the backoff */
    /* http only */
    bool probe;       /* a probe slot (one request on a fresh connection), not a load slot */
    bool outstanding; /* a request of the --requests budget is in flight */
    bool in_body;     /* the head is parsed; `body_left` bytes of the body are to come */
    bool closes;      /* the server closes the connection after this response */
    int status;
    uint64_t body_left;
    size_t head_len;
    char *head;       /* HEAD_MAX bytes, or NULL until a response arrives */
};

struct error_kind {
    char name[16];
    uint64_t count;
};

struct samples {
    uint32_t *us;
    size_t len, cap;
};

struct run {
    const struct config *cfg;
    struct target target;
    int epfd;
    struct epoll_event events[MAX_EVENTS];
    struct slot *slots;
    char *request;
    char *scratch;         /* one byte longer than a reply, to catch long ones */
    uint64_t connections;  /* sockets opened so far: picks the source address */
    int64_t timeout_ns;
    int64_t scan_ns;       /* period of the timeout scan */
    int64_t next_scan;
    bool measuring;        /* inside the measured window */
    int64_t window_open, window_close; /* idle: from start to HOLDING */
    long pending;          /* idle mode: slots not yet served nor failed */
    bool stdin_open;       /* fd 0 was open at start */
    bool stdin_eof;
    uint64_t exchanges;    /* completed in the whole run (warmup included) */
    uint64_t ops, errors, lost; /* counted in the window */
    struct samples latency;
    struct error_kind kinds[MAX_ERROR_KINDS];
    size_t nkinds;
    size_t request_len;
    /* http: whole-run request accounting (frozen once the run has `stopped`) */
    long nslots;           /* concurrency load slots, then the probe slots */
    bool stopped;          /* the load is over; only probes in flight are still awaited */
    uint64_t issued, completed, failed, outstanding, unanswered, closed_by_server;
    uint64_t probes, probe_failures;
    int64_t probe_interval_ns, next_probe;
    struct samples probe_latency;
    struct error_kind probe_kinds[MAX_ERROR_KINDS];
    size_t nprobe_kinds;
};

/* ---- small utilities ---------------------------------------------------- */

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p)
        die("malloc");
    return p;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t seconds_to_ns(double s)
{
    return (int64_t)llround(s * NS_PER_S);
}

static const char *errno_name(int err, char buf[16])
{
#define E(x) {x, #x}
    static const struct { int code; const char *name; } names[] = {
        E(ECONNREFUSED), E(ECONNRESET), E(ETIMEDOUT), E(EADDRNOTAVAIL), E(EADDRINUSE),
        E(EPIPE), E(EAGAIN), E(EMFILE), E(ENFILE), E(ENOBUFS), E(ENOMEM),
        E(EHOSTUNREACH), E(ENETUNREACH), E(ECONNABORTED), E(EINPROGRESS),
        E(ENOENT), E(EACCES), E(EPERM), E(EMSGSIZE), E(ENOTCONN),
    };
#undef E
    for (int i = 0; i < COUNT(names); i++)
        if (names[i].code == err)
            return names[i].name;
    snprintf(buf, 16, "E%d", err);
    return buf;
}

/* ---- arguments ---------------------------------------------------------- */

static const char usage[] =
    "usage: loadgen --mode crr|rr|dgram|idle|http --transport tcp|unix|udp|unixdgram --address ADDR\n"
    "               [--concurrency N] [--duration S] [--warmup S] [--message-size B] [--line]\n"
    "               [--source-spread K] [--timeout S] [--hold S]\n"
    "               [--path /P] [--requests N] [--probe-interval S]\n";

static void __attribute__((noreturn, format(printf, 1, 2))) bad_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fputs(usage, stderr);
    exit(2);
}

static int parse_name(const char *option, const char *text, const char *const *names, int count)
{
    for (int i = 0; i < count; i++)
        if (strcmp(text, names[i]) == 0)
            return i;
    bad_usage("--%s: unknown value '%s'", option, text);
}

static long parse_long(const char *option, const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max)
        bad_usage("--%s: expected an integer from %ld to %ld, got '%s'", option, min, max, text);
    return value;
}

static double parse_seconds(const char *option, const char *text, bool zero_ok)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    /* The cap keeps every deadline far from int64 nanosecond overflow. */
    if (errno || end == text || *end || !isfinite(value) || value < 0 || value > 1e6 ||
        (value == 0 && !zero_ok))
        bad_usage("--%s: expected %s number of seconds, got '%s'", option,
                  zero_ok ? "a non-negative" : "a positive", text);
    return value;
}

static void parse_args(int argc, char **argv, struct config *c)
{
    enum { O_MODE, O_TRANSPORT, O_ADDRESS, O_CONCURRENCY, O_DURATION, O_WARMUP,
           O_MESSAGE_SIZE, O_SOURCE_SPREAD, O_TIMEOUT, O_HOLD, O_TARGET_PATH, O_REQUESTS, O_PROBE_INTERVAL,
           O_LINE, O_HELP };
    static const struct option options[] = {
        {"mode", required_argument, NULL, O_MODE},
        {"transport", required_argument, NULL, O_TRANSPORT},
        {"address", required_argument, NULL, O_ADDRESS},
        {"concurrency", required_argument, NULL, O_CONCURRENCY},
        {"duration", required_argument, NULL, O_DURATION},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"message-size", required_argument, NULL, O_MESSAGE_SIZE},
        {"source-spread", required_argument, NULL, O_SOURCE_SPREAD},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"hold", required_argument, NULL, O_HOLD},
        {"path", required_argument, NULL, O_TARGET_PATH},
        {"requests", required_argument, NULL, O_REQUESTS},
        {"probe-interval", required_argument, NULL, O_PROBE_INTERVAL},
        {"line", no_argument, NULL, O_LINE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    *c = (struct config){.concurrency = 1, .duration = 2.0, .warmup = 0.5, .timeout = 2.0,
                         .hold = 30.0, .message_size = 12, .path = "/"};
    int mode = -1, transport = -1, opt;
    opterr = 0; /* bad_usage() reports, so that every complaint looks the same */
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        /* An option's value is its index in options[]: that names it in messages. */
        const char *name = opt >= 0 && opt <= O_HELP ? options[opt].name : NULL;
        switch (opt) {
        case O_MODE: mode = parse_name(name, optarg, mode_names, COUNT(mode_names)); break;
        case O_TRANSPORT: transport = parse_name(name, optarg, transport_names, COUNT(transport_names)); break;
        case O_ADDRESS: c->address = optarg; break;
        case O_CONCURRENCY: c->concurrency = parse_long(name, optarg, 1, 1000000); break;
        case O_DURATION: c->duration = parse_seconds(name, optarg, true); break;
        case O_WARMUP: c->warmup = parse_seconds(name, optarg, true); break;
        case O_MESSAGE_SIZE: c->message_size = parse_long(name, optarg, 1, 1L << 24); break;
        /* 127.0.0.(1 + n % K) must stay a valid last octet. */
        case O_SOURCE_SPREAD: c->source_spread = parse_long(name, optarg, 0, 255); break;
        case O_TIMEOUT: c->timeout = parse_seconds(name, optarg, false); break;
        case O_HOLD: c->hold = parse_seconds(name, optarg, true); break;
        case O_TARGET_PATH: c->path = optarg; break;
        case O_REQUESTS: c->requests = parse_long(name, optarg, 0, 1000000000L); break;
        case O_PROBE_INTERVAL: c->probe_interval = parse_seconds(name, optarg, true); break;
        case O_LINE: c->line = true; break;
        case O_HELP: fputs(usage, stdout); exit(0);
        default: bad_usage("bad or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        bad_usage("unexpected argument '%s'", argv[optind]);
    if (mode < 0 || transport < 0 || !c->address)
        bad_usage("--mode, --transport and --address are required");
    c->mode = (enum mode)mode;
    c->transport = (enum transport)transport;
    bool datagram = c->transport == TR_UDP || c->transport == TR_UNIXDGRAM;
    if (datagram != (c->mode == MODE_DGRAM))
        bad_usage("mode %s does not run over %s", mode_names[c->mode], transport_names[c->transport]);
    /* The target goes into the request line as is: one token starting with '/'. */
    if (c->path[0] != '/' || strlen(c->path) > 1024 || strpbrk(c->path, " \t\r\n"))
        bad_usage("--path: expected '/' then up to 1023 characters without blanks, got '%s'", c->path);
    /* A probe every millisecond or more often would be a load of its own. */
    if (c->probe_interval != 0 && c->probe_interval < 0.001)
        bad_usage("--probe-interval: expected 0 or at least 0.001 seconds, got '%g'", c->probe_interval);
}

/* HOST:PORT with an IPv4 literal, or [IPv6]:PORT. */
static bool parse_inet(const char *text, struct target *t)
{
    const char *host = text, *port;
    size_t host_len;
    bool v6 = text[0] == '[';
    if (v6) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return false;
        host = text + 1;
        host_len = (size_t)(close - host);
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon)
            return false;
        host_len = (size_t)(colon - text);
        port = colon + 1;
    }
    char buf[INET6_ADDRSTRLEN];
    if (host_len >= sizeof buf || *port < '0' || *port > '9')
        return false;
    memcpy(buf, host, host_len);
    buf[host_len] = '\0';
    char *end;
    long number = strtol(port, &end, 10);
    if (*end || number < 1 || number > 65535)
        return false;

    memset(&t->addr, 0, sizeof t->addr);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)number);
        t->len = sizeof *a;
        return inet_pton(AF_INET6, buf, &a->sin6_addr) == 1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)number);
    t->len = sizeof *a;
    return inet_pton(AF_INET, buf, &a->sin_addr) == 1;
}

static bool parse_unix(const char *path, struct target *t)
{
    struct sockaddr_un *a = (struct sockaddr_un *)&t->addr;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof a->sun_path)
        return false;
    memset(&t->addr, 0, sizeof t->addr);
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, len + 1);
    t->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return true;
}

static void parse_target(const struct config *c, struct target *t)
{
    bool inet = c->transport == TR_TCP || c->transport == TR_UDP;
    if (!(inet ? parse_inet(c->address, t) : parse_unix(c->address, t)))
        bad_usage("--address: cannot parse '%s' as %s", c->address,
                  inet ? "HOST:PORT or [IPV6]:PORT" : "a socket path");
    if (c->source_spread > 0 && (c->transport != TR_TCP || t->addr.ss_family != AF_INET))
        bad_usage("--source-spread is for --transport tcp over IPv4 only");
}

/* ---- accounting --------------------------------------------------------- */

static void add_kind(struct error_kind *kinds, size_t *nkinds, const char *kind)
{
    for (size_t i = 0; i < *nkinds; i++) {
        if (strcmp(kinds[i].name, kind) == 0) {
            kinds[i].count++;
            return;
        }
    }
    if (*nkinds == MAX_ERROR_KINDS)
        return; /* a kind beyond the table is still counted in the total */
    struct error_kind *k = &kinds[(*nkinds)++];
    snprintf(k->name, sizeof k->name, "%s", kind);
    k->count = 1;
}

static void count_error(struct run *r, const char *kind)
{
    if (!r->measuring)
        return;
    r->errors++;
    add_kind(r->kinds, &r->nkinds, kind);
}

static void add_sample(struct samples *s, int64_t ns)
{
    if (s->len == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->us = realloc(s->us, s->cap * sizeof *s->us);
        if (!s->us)
            die("realloc");
    }
    int64_t us = (ns + NS_PER_US / 2) / NS_PER_US;
    s->us[s->len++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* ---- slots -------------------------------------------------------------- */

static bool is_stream(const struct run *r)
{
    return r->cfg->transport == TR_TCP || r->cfg->transport == TR_UNIX;
}

static size_t message_size(const struct run *r)
{
    return (size_t)r->cfg->message_size;
}

/* http: may a load slot send one more request of the --requests budget? */
static bool budget_left(const struct run *r)
{
    return !r->stopped && (r->cfg->requests == 0 || r->issued < (uint64_t)r->cfg->requests);
}

/* http: the request in flight on a load slot has its answer (or failed for good). */
static void settle_request(struct run *r, struct slot *s, bool completed)
{
    if (!s->outstanding)
        return;
    s->outstanding = false;
    r->outstanding--;
    if (r->stopped)
        return; /* the run is over: what comes in now is not counted */
    if (completed)
        r->completed++;
    else
        r->failed++;
}

static void count_probe_failure(struct run *r, const char *kind)
{
    r->probe_failures++;
    add_kind(r->probe_kinds, &r->nprobe_kinds, kind);
}

/* Slots that got at least one reply: rr's and idle's connections served. */
static long slots_served(const struct run *r)
{
    long served = 0;
    for (long i = 0; i < r->cfg->concurrency; i++)
        served += r->slots[i].served;
    return served;
}

static void begin_exchange(struct run *r, struct slot *s, int64_t t)
{
    s->state = SLOT_EXCHANGING;
    s->sent = s->got = 0;
    s->started = t;
    s->deadline = t + r->timeout_ns;
    s->in_body = s->closes = false;
    s->head_len = 0;
}

static void close_slot(struct slot *s)
{
    if (s->fd >= 0)
        close(s->fd); /* also removes it from the epoll set */
    s->fd = -1;
}

/* A failed exchange: counted, closed, and (but in idle mode) retried after a pause.
 * http: a probe is over; a load slot retries only while the budget lasts. */
static void fail_slot(struct run *r, struct slot *s, const char *kind)
{
    close_slot(s);
    if (s->probe) {
        count_probe_failure(r, kind);
        s->state = SLOT_DEAD;
        return;
    }
    count_error(r, kind);
    if (r->cfg->mode == MODE_HTTP) {
        settle_request(r, s, false);
        if (!r->stopped && (strcmp(kind, "EOF") == 0 || strcmp(kind, "ECONNRESET") == 0 ||
                            strcmp(kind, "EPIPE") == 0))
            r->closed_by_server++;
        if (!budget_left(r)) {
            s->state = SLOT_DEAD;
            return;
        }
    }
    if (r->cfg->mode == MODE_IDLE) {
        r->pending--;
        s->state = SLOT_DEAD;
        return;
    }
    s->state = SLOT_BACKOFF;
    s->deadline = now_ns() + BACKOFF_NS;
    if (s->deadline < r->next_scan)
        r->next_scan = s->deadline;
}

static void fail_slot_errno(struct run *r, struct slot *s, int err)
{
    char buf[16];
    fail_slot(r, s, errno_name(err, buf));
}

/* Options and source address of a new client socket; 0 or an errno. */
static int prepare_socket(struct run *r, int fd)
{
    const struct config *c = r->cfg;
    int family = r->target.addr.ss_family;
    int one = 1;
    switch (c->transport) {
    case TR_TCP:
        /* Small requests go out in one segment anyway; a request larger
         * than that would have its tail held by Nagle until an ACK. */
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            return errno;
        if (c->source_spread > 0) {
            /* NO_PORT defers the port choice to connect(), which needs the
             * port unique per 4-tuple only, not per source address. */
            struct sockaddr_in src = {.sin_family = AF_INET};
            src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + (uint32_t)(r->connections % (uint64_t)c->source_spread));
            if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0 ||
                bind(fd, (struct sockaddr *)&src, sizeof src) < 0)
                return errno;
        }
        return 0;
    case TR_UDP:
        if (family == AF_INET) {
            struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            return bind(fd, (struct sockaddr *)&src, sizeof src) < 0 ? errno : 0;
        }
        struct sockaddr_in6 src6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        return bind(fd, (struct sockaddr *)&src6, sizeof src6) < 0 ? errno : 0;
    case TR_UNIXDGRAM: {
        /* A bare family asks for autobind: a unique abstract name, so the
         * server has an address to reply to. */
        struct sockaddr_un src = {.sun_family = AF_UNIX};
        return bind(fd, (struct sockaddr *)&src, sizeof src.sun_family) < 0 ? errno : 0;
    }
    case TR_UNIX:
        return 0;
    }
    return 0;
}

/* Opens, connects and registers the slot's socket; 0 or an errno.  The
 * exchange's clock starts just before connect(), as crr's latency requires. */
static int open_socket(struct run *r, struct slot *s)
{
    int type = (is_stream(r) ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    s->fd = socket(r->target.addr.ss_family, type, 0);
    if (s->fd < 0)
        return errno;
    int err = prepare_socket(r, s->fd);
    r->connections++;
    if (err)
        return err;
    begin_exchange(r, s, now_ns());
    bool in_progress = false;
    if (connect(s->fd, (struct sockaddr *)&r->target.addr, r->target.len) < 0) {
        if (errno != EINPROGRESS)
            return errno;
        in_progress = true;
    }
    /* Registering after connect() is safe: EPOLL_CTL_ADD reports readiness
     * that is already there. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u64 = (uint64_t)(s - r->slots)};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        return errno;
    if (in_progress)
        s->state = SLOT_CONNECTING;
    return 0;
}

static void send_request(struct run *r, struct slot *s)
{
    size_t size = r->request_len;
    while (s->sent < size) {
        ssize_t n = send(s->fd, r->request + s->sent, size - s->sent, MSG_NOSIGNAL);
        if (n >= 0) {
            s->sent += (size_t)n;
        } else if (errno == EAGAIN) {
            return; /* the next EPOLLOUT edge resumes */
        } else if (errno != EINTR) {
            fail_slot_errno(r, s, errno);
            return;
        }
    }
}

static void start_slot(struct run *r, struct slot *s);

/* http: a connected load slot sends the next request of the budget, or
 * keeps its connection open, idle, when the budget is spent. */
static void next_http_request(struct run *r, struct slot *s, int64_t t)
{
    if (!budget_left(r)) {
        s->state = SLOT_HOLDING;
        return;
    }
    r->issued++;
    r->outstanding++;
    s->outstanding = true;
    begin_exchange(r, s, t);
    send_request(r, s);
}

/* http: a whole response has been read (see read_http_reply). */
static void complete_http(struct run *r, struct slot *s)
{
    int64_t t = now_ns();
    char kind[16];
    snprintf(kind, sizeof kind, "HTTP_%d", s->status);
    if (s->probe) {
        close_slot(s);
        s->state = SLOT_DEAD;
        if (s->status == 200)
            add_sample(&r->probe_latency, t - s->started);
        else
            count_probe_failure(r, kind);
        return;
    }
    if (s->status == 200) {
        if (r->measuring) {
            r->ops++;
            add_sample(&r->latency, t - s->started);
        }
        r->exchanges++;
        s->served = true;
    } else {
        count_error(r, kind);
    }
    settle_request(r, s, s->status == 200);
    if (s->closes) {
        /* The server said it closes (Connection: close, or HTTP/1.0 without
         * keep-alive): a new connection carries on. */
        if (!r->stopped)
            r->closed_by_server++;
        close_slot(s);
        if (budget_left(r))
            start_slot(r, s);
        else
            s->state = SLOT_DEAD;
        return;
    }
    next_http_request(r, s, t);
}

static void complete_exchange(struct run *r, struct slot *s)
{
    int64_t t = now_ns();
    if (r->measuring) {
        r->ops++;
        add_sample(&r->latency, t - s->started);
    }
    r->exchanges++;
    s->served = true;
    switch (r->cfg->mode) {
    case MODE_CRR:
        close_slot(s);
        start_slot(r, s);
        break;
    case MODE_IDLE:
        s->state = SLOT_HOLDING;
        r->pending--;
        break;
    case MODE_RR:
    case MODE_DGRAM:
        begin_exchange(r, s, t);
        send_request(r, s);
        break;
    case MODE_HTTP:
        break; /* complete_http() */
    }
}

/* With nothing bound to the server's port, the kernel may pick that very
 * port as the client's (a TCP simultaneous open, or a UDP socket sending to
 * itself), and the client would then "echo" its own requests.  That can
 * only happen when no server owns the port: report it as the refusal it is. */
static bool connected_to_self(const struct run *r, int fd)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0 || local.ss_family != r->target.addr.ss_family)
        return false;
    if (local.ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&local;
        const struct sockaddr_in *b = (const struct sockaddr_in *)&r->target.addr;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&local;
    const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&r->target.addr;
    return a->sin6_port == b->sin6_port && memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
}

static void on_connected(struct run *r, struct slot *s)
{
    bool inet = r->cfg->transport == TR_TCP || r->cfg->transport == TR_UDP;
    if (inet && connected_to_self(r, s->fd)) {
        fail_slot_errno(r, s, ECONNREFUSED);
        return;
    }
    /* rr, dgram and http time each exchange from its send; crr, idle and
     * http's probes time the connect() too (idle's "served within --timeout"
     * counts from it). */
    if (r->cfg->mode == MODE_HTTP && !s->probe) {
        next_http_request(r, s, now_ns());
        return;
    }
    if (r->cfg->mode == MODE_RR || r->cfg->mode == MODE_DGRAM)
        begin_exchange(r, s, now_ns());
    s->state = SLOT_EXCHANGING;
    send_request(r, s);
}

static void start_slot(struct run *r, struct slot *s)
{
    int err = open_socket(r, s);
    if (err)
        fail_slot_errno(r, s, err);
    else if (s->state == SLOT_EXCHANGING)
        on_connected(r, s); /* unix and datagram sockets connect at once */
}

/* Edge-triggered: read until the reply is complete or the socket is drained.
 * Asking for one byte more than is missing catches an over-long reply. */
static void read_stream_reply(struct run *r, struct slot *s)
{
    size_t size = message_size(r);
    for (;;) {
        size_t missing = size - s->got;
        ssize_t n = recv(s->fd, r->scratch, missing + 1, 0);
        if (n > 0) {
            if ((size_t)n > missing || memcmp(r->scratch, r->request + s->got, (size_t)n) != 0) {
                fail_slot(r, s, "MISMATCH");
                return;
            }
            s->got += (size_t)n;
            if (s->got == size) {
                complete_exchange(r, s);
                return;
            }
        } else if (n == 0) {
            fail_slot(r, s, "EOF");
            return;
        } else if (errno == EAGAIN) {
            return;
        } else if (errno != EINTR) {
            fail_slot_errno(r, s, errno);
            return;
        }
    }
}

/* ---- http responses ----------------------------------------------------- */

/* Case-insensitive: does the comma-separated header value list `token`? */
static bool has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(value + start, token, tlen) == 0)
            return true;
    }
    return false;
}

/* Parses the response head in s->head[0, size), which ends with CRLF CRLF;
 * sets status, body_left and closes.  Returns NULL or the error kind:
 * BADRESPONSE (not an HTTP/1.x head), CHUNKED (a chunked body: this client
 * reads Content-Length bodies only) or NOLENGTH (a body delimited by the
 * connection's close). */
static const char *parse_head(struct slot *s, size_t size)
{
    const char *p = s->head, *end = s->head + size - 2; /* the final empty line's CRLF */
    /* "HTTP/1.x SSS" then a space or the end of the line */
    if (size < 14 || strncmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
        p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (p[12] != ' ' && p[12] != '\r'))
        return "BADRESPONSE";
    bool http10 = p[7] == '0';
    s->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    bool keep_alive = false, close = false, have_length = false;
    uint64_t length = 0;
    const char *line = memchr(p, '\n', (size_t)(end - p));
    if (!line || line[-1] != '\r')
        return "BADRESPONSE";
    line++;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol || eol == line || eol[-1] != '\r')
            return "BADRESPONSE";
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon || colon == line)
            return "BADRESPONSE";
        size_t name_len = (size_t)(colon - line);
        const char *value = colon + 1;
        size_t value_len = (size_t)(eol - 1 - value);
        while (value_len && (*value == ' ' || *value == '\t'))
            value++, value_len--;
        while (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t'))
            value_len--;
#define NAME_IS(n) (name_len == sizeof(n) - 1 && strncasecmp(line, n, name_len) == 0)
        if (NAME_IS("Content-Length")) {
            uint64_t v = 0;
            if (value_len == 0 || value_len > 15)
                return "BADRESPONSE";
            for (size_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9')
                    return "BADRESPONSE";
                v = v * 10 + (uint64_t)(value[i] - '0');
            }
            if (have_length && v != length)
                return "BADRESPONSE";
            have_length = true;
            length = v;
        } else if (NAME_IS("Transfer-Encoding")) {
            return "CHUNKED";
        } else if (NAME_IS("Connection")) {
            close = close || has_token(value, value_len, "close");
            keep_alive = keep_alive || has_token(value, value_len, "keep-alive");
        }
#undef NAME_IS
        line = eol + 1;
    }
    /* 1xx, 204 and 304 have no body whatever they say. */
    bool bodiless = s->status < 200 || s->status == 204 || s->status == 304;
    if (!have_length && !bodiless)
        return "NOLENGTH";
    s->body_left = bodiless ? 0 : length;
    s->closes = close || (http10 && !keep_alive);
    return NULL;
}

/* A response read only in part: acknowledge what came at once.  A server
 * that writes its head and its body separately (SimpleHTTPRequestHandler
 * does) has the body held by Nagle until the head is acknowledged, and a
 * client that has nothing to send delays that ACK by up to 40 ms: every
 * request would cost 40 ms of nobody's work, and the run would measure
 * that instead of the server. */
static void ack_now(struct run *r, struct slot *s)
{
    int one = 1;
    if (r->cfg->transport == TR_TCP)
        setsockopt(s->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one); /* best effort */
}

/* Edge-triggered: read the head into s->head, then exactly Content-Length
 * bytes of body (discarded); a byte more than that is a bad response. */
static void read_http_reply(struct run *r, struct slot *s)
{
    bool partial = false;
    if (!s->head)
        s->head = xmalloc(HEAD_MAX);
    for (;;) {
        ssize_t n;
        if (!s->in_body) {
            size_t room = HEAD_MAX - s->head_len;
            if (room == 0) {
                fail_slot(r, s, "BADRESPONSE"); /* a head longer than HEAD_MAX */
                return;
            }
            n = recv(s->fd, s->head + s->head_len, room, 0);
            if (n > 0) {
                size_t from = s->head_len > 3 ? s->head_len - 3 : 0;
                s->head_len += (size_t)n;
                const char *blank = memmem(s->head + from, s->head_len - from, "\r\n\r\n", 4);
                if (!blank) {
                    partial = true;
                    continue;
                }
                size_t size = (size_t)(blank - s->head) + 4;
                const char *error = parse_head(s, size);
                if (error) {
                    fail_slot(r, s, error);
                    return;
                }
                size_t extra = s->head_len - size; /* body bytes read with the head */
                if (extra > s->body_left) {
                    fail_slot(r, s, "BADRESPONSE");
                    return;
                }
                s->body_left -= extra;
                s->in_body = true;
                if (s->body_left == 0) {
                    complete_http(r, s);
                    return;
                }
                partial = true;
                continue;
            }
        } else {
            size_t want = s->body_left < BODY_CHUNK ? (size_t)s->body_left + 1 : BODY_CHUNK;
            n = recv(s->fd, r->scratch, want, 0);
            if (n > 0) {
                if ((uint64_t)n > s->body_left) {
                    fail_slot(r, s, "BADRESPONSE");
                    return;
                }
                s->body_left -= (uint64_t)n;
                if (s->body_left == 0) {
                    complete_http(r, s);
                    return;
                }
                partial = true;
                continue;
            }
        }
        if (n == 0) {
            fail_slot(r, s, "EOF");
            return;
        } else if (errno == EAGAIN) {
            if (partial)
                ack_now(r, s);
            return;
        } else if (errno != EINTR) {
            fail_slot_errno(r, s, errno);
            return;
        }
    }
}

static void read_datagram_reply(struct run *r, struct slot *s)
{
    size_t size = message_size(r);
    for (;;) {
        ssize_t n = recv(s->fd, r->scratch, size + 1, 0);
        if (n >= 0) {
            if ((size_t)n != size || memcmp(r->scratch, r->request, size) != 0)
                fail_slot(r, s, "MISMATCH");
            else
                complete_exchange(r, s);
            return;
        }
        if (errno == EAGAIN)
            return;
        if (errno != EINTR) {
            fail_slot_errno(r, s, errno); /* udp: ICMP port unreachable */
            return;
        }
    }
}

static int socket_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 ? errno : err;
}

static void on_slot_event(struct run *r, struct slot *s, uint32_t events)
{
    const uint32_t writable = EPOLLOUT | EPOLLERR | EPOLLHUP;
    const uint32_t readable = EPOLLIN | EPOLLERR | EPOLLHUP;
    switch (s->state) {
    case SLOT_CONNECTING:
        if (events & writable) {
            int err = socket_error(s->fd);
            if (err)
                fail_slot_errno(r, s, err);
            else
                on_connected(r, s);
        }
        return;
    case SLOT_EXCHANGING:
        if ((events & writable) && s->sent < r->request_len)
            send_request(r, s);
        /* A large request is echoed while it is still being sent: read
         * on, or both sides could block on full buffers. */
        if (s->state == SLOT_EXCHANGING && (events & readable)) {
            if (r->cfg->mode == MODE_HTTP)
                read_http_reply(r, s);
            else if (is_stream(r))
                read_stream_reply(r, s);
            else
                read_datagram_reply(r, s);
        }
        return;
    case SLOT_HOLDING:
        return; /* idle: what becomes of a held connection is not counted */
    case SLOT_BACKOFF:
    case SLOT_DEAD:
        return; /* no socket, so no event: closing it removed it from epoll */
    }
}

/* A dgram timeout is a loss, not an error.  The next request goes out on a
 * fresh socket so that the late reply cannot pass for its answer. */
static void lose_request(struct run *r, struct slot *s)
{
    if (r->measuring)
        r->lost++;
    close_slot(s);
    start_slot(r, s);
}

static void scan_slots(struct run *r, int64_t now)
{
    for (long i = 0; i < r->nslots; i++) {
        struct slot *s = &r->slots[i];
        bool waiting = s->state == SLOT_CONNECTING || s->state == SLOT_EXCHANGING;
        if (s->state == SLOT_BACKOFF && now >= s->deadline)
            start_slot(r, s);
        else if (waiting && now >= s->deadline && is_stream(r))
            fail_slot(r, s, "TIMEOUT");
        else if (waiting && now >= s->deadline)
            lose_request(r, s);
    }
}

/* ---- the event loop ----------------------------------------------------- */

static void on_stdin(struct run *r)
{
    char buf[4096];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
        r->stdin_eof = true;
}

/* Waits for events, at the latest until `wake_by` or the next scan; returns their count. */
static int wait_events(struct run *r, int64_t wake_by)
{
    int64_t now = now_ns();
    int64_t until = wake_by < r->next_scan ? wake_by : r->next_scan;
    int timeout_ms = until <= now ? 0 : (int)((until - now + NS_PER_MS - 1) / NS_PER_MS);
    int n = epoll_wait(r->epfd, r->events, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno != EINTR)
            die("epoll_wait");
        return 0;
    }
    return n;
}

static void dispatch_events(struct run *r, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t token = r->events[i].data.u64;
        if (token == STDIN_TOKEN)
            on_stdin(r);
        else
            on_slot_event(r, &r->slots[token], r->events[i].events);
    }
}

static void scan_if_due(struct run *r, int64_t now)
{
    if (now < r->next_scan)
        return;
    r->next_scan = now + r->scan_ns;
    scan_slots(r, now);
}

/* One turn of the loop: wait, handle events, scan; returns the time it woke. */
static int64_t turn(struct run *r, int64_t wake_by, int64_t window_start)
{
    int n = wait_events(r, wake_by);
    int64_t now = now_ns();
    if (!r->measuring && now >= window_start) {
        r->measuring = true;
        r->window_open = now;
    }
    dispatch_events(r, n);
    scan_if_due(r, now);
    return now;
}

static void start_all(struct run *r)
{
    for (long i = 0; i < r->cfg->concurrency; i++)
        start_slot(r, &r->slots[i]);
}

/* crr, rr, dgram: run until the window closes; whatever is in flight then is dropped. */
static void run_load(struct run *r)
{
    int64_t window_start = r->window_open + seconds_to_ns(r->cfg->warmup);
    int64_t window_end = window_start + seconds_to_ns(r->cfg->duration);
    r->measuring = r->cfg->warmup == 0; /* count failures of the very first connects */
    start_all(r);
    for (;;) {
        int64_t now = turn(r, r->measuring ? window_end : window_start, window_start);
        if (now >= window_end) {
            r->window_close = now;
            return;
        }
    }
}

static bool probes_in_flight(const struct run *r)
{
    for (long i = r->cfg->concurrency; i < r->nslots; i++)
        if (r->slots[i].state != SLOT_DEAD)
            return true;
    return false;
}

/* http: a fresh connection, one request, timed from connect() to the reply. */
static void launch_probe(struct run *r)
{
    r->probes++;
    for (long i = r->cfg->concurrency; i < r->nslots; i++) {
        if (r->slots[i].state == SLOT_DEAD) {
            start_slot(r, &r->slots[i]);
            return;
        }
    }
    count_probe_failure(r, "BUSY"); /* cannot happen: there is a slot per interval of --timeout */
}

/* http: the load until every one of --requests is answered (or failed) or the
 * window closes, with a probe every --probe-interval inside the window; then
 * the probes still in flight, each until its reply or its --timeout, while
 * the load's connections stay open (closing them could free a stalled server
 * and flatter a late probe). */
static void run_http(struct run *r)
{
    int64_t window_start = r->window_open + seconds_to_ns(r->cfg->warmup);
    int64_t window_end = window_start + seconds_to_ns(r->cfg->duration);
    r->measuring = r->cfg->warmup == 0;
    r->next_probe = window_start;
    start_all(r);
    for (;;) {
        int64_t wake_by = r->measuring ? window_end : window_start;
        if (r->probe_interval_ns && r->next_probe < wake_by)
            wake_by = r->next_probe;
        int64_t now = turn(r, wake_by, window_start);
        bool answered = r->cfg->requests > 0 && r->issued == (uint64_t)r->cfg->requests && r->outstanding == 0;
        if (now >= window_end || answered) {
            r->window_close = now;
            break;
        }
        if (r->probe_interval_ns && r->measuring && now >= r->next_probe) {
            launch_probe(r);
            r->next_probe += r->probe_interval_ns;
            if (r->next_probe <= now) /* the loop fell behind: no burst of probes */
                r->next_probe = now + r->probe_interval_ns;
        }
    }
    r->unanswered = r->outstanding;
    r->stopped = true;
    r->measuring = false;
    while (probes_in_flight(r))
        turn(r, INT64_MAX, INT64_MAX);
}

/* Watches stdin for EOF; false if it is at EOF already.  The driver gives
 * idle runs a pipe and closes it to end the hold.  epoll refuses regular
 * files and /dev/null (EPERM), whose end is always right there, and a
 * stdin closed at start has nothing to give either (by now fd 0 may even
 * be one of our sockets): both count as EOF. */
static bool watch_stdin(struct run *r)
{
    if (!r->stdin_open)
        return false;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STDIN_TOKEN};
    return epoll_ctl(r->epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev) == 0;
}

/* idle: serve every connection once, report, hold until stdin's EOF or --hold. */
static void run_idle(struct run *r)
{
    r->measuring = true; /* no warmup: everything counts */
    r->pending = r->cfg->concurrency;
    start_all(r);
    /* Every exchange ends by --timeout at the latest (the scan fails it). */
    while (r->pending > 0)
        turn(r, INT64_MAX, 0);
    r->window_close = now_ns();

    printf("HOLDING %ld\n", slots_served(r));
    fflush(stdout);

    r->stdin_eof = !watch_stdin(r);
    int64_t hold_end = now_ns() + seconds_to_ns(r->cfg->hold);
    while (!r->stdin_eof && turn(r, hold_end, 0) < hold_end)
        ;
}

/* ---- result ------------------------------------------------------------- */

static int compare_kinds(const void *a, const void *b)
{
    return strcmp(((const struct error_kind *)a)->name, ((const struct error_kind *)b)->name);
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least `percent` % of samples at or below it. */
static void format_percentile(const struct samples *s, unsigned percent, char *buf, size_t size)
{
    if (s->len == 0) {
        snprintf(buf, size, "null");
        return;
    }
    size_t rank = (s->len * percent + 99) / 100; /* ceil(len * percent / 100) >= 1 */
    snprintf(buf, size, "%" PRIu32 ".0", s->us[rank - 1]);
}

static long conns_served(const struct run *r)
{
    if (r->cfg->mode == MODE_CRR || r->cfg->mode == MODE_DGRAM)
        return r->exchanges > 0 ? r->cfg->concurrency : 0;
    return slots_served(r);
}

static void print_result(struct run *r)
{
    const struct config *c = r->cfg;
    double seconds = (double)(r->window_close - r->window_open) / NS_PER_S;
    if (r->latency.len > 0) /* qsort() wants a valid array even for no element */
        qsort(r->latency.us, r->latency.len, sizeof *r->latency.us, compare_u32);
    qsort(r->kinds, r->nkinds, sizeof *r->kinds, compare_kinds); /* as pyloadgen.py lists them */
    char p50[32], p99[32];
    format_percentile(&r->latency, 50, p50, sizeof p50);
    format_percentile(&r->latency, 99, p99, sizeof p99);

    printf("{\"generator\": \"c\", \"mode\": \"%s\", \"transport\": \"%s\", \"concurrency\": %ld, "
           "\"seconds\": %.6f, \"ops\": %" PRIu64 ", \"ops_per_s\": %.1f, "
           "\"errors\": %" PRIu64 ", \"lost\": %" PRIu64 ", \"conns_served\": %ld, "
           "\"p50_us\": %s, \"p99_us\": %s, \"error_kinds\": {",
           mode_names[c->mode], transport_names[c->transport], c->concurrency, seconds, r->ops,
           seconds > 0 ? (double)r->ops / seconds : 0.0, r->errors, r->lost, conns_served(r), p50, p99);
    for (size_t i = 0; i < r->nkinds; i++)
        printf("%s\"%s\": %" PRIu64, i ? ", " : "", r->kinds[i].name, r->kinds[i].count);
    printf("}");
    if (c->mode == MODE_HTTP) {
        if (r->probe_latency.len > 0)
            qsort(r->probe_latency.us, r->probe_latency.len, sizeof *r->probe_latency.us, compare_u32);
        qsort(r->probe_kinds, r->nprobe_kinds, sizeof *r->probe_kinds, compare_kinds);
        format_percentile(&r->probe_latency, 50, p50, sizeof p50);
        format_percentile(&r->probe_latency, 100, p99, sizeof p99);
        printf(", \"requests\": %ld, \"completed\": %" PRIu64 ", \"failed\": %" PRIu64 ", \"unanswered\": %" PRIu64
               ", \"closed_by_server\": %" PRIu64 ", \"probes\": %" PRIu64 ", \"probe_failures\": %" PRIu64
               ", \"probe_p50_us\": %s, \"probe_max_us\": %s, \"probe_error_kinds\": {",
               c->requests, r->completed, r->failed, r->unanswered, r->closed_by_server, r->probes,
               r->probe_failures, p50, p99);
        for (size_t i = 0; i < r->nprobe_kinds; i++)
            printf("%s\"%s\": %" PRIu64, i ? ", " : "", r->probe_kinds[i].name, r->probe_kinds[i].count);
        printf("}");
    }
    printf("}\n");
    fflush(stdout);
}

/* ---- setup -------------------------------------------------------------- */

/* Idle runs hold thousands of connections; the soft limit is often 1024. */
static void raise_fd_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit); /* best effort: EMFILE is then reported per connection */
    }
}

static char *make_http_request(const char *path, size_t *len)
{
    size_t size = strlen(path) + 64;
    char *request = xmalloc(size);
    int n = snprintf(request, size, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    *len = (size_t)n;
    return request;
}

static char *make_request(size_t size, bool line)
{
    char *request = xmalloc(size);
    memset(request, '.', size);
    memcpy(request, GREETING, size < strlen(GREETING) ? size : strlen(GREETING));
    if (line) /* the same size: a line server's reply (the line, then a newline) is the same bytes */
        request[size - 1] = '\n';
    return request;
}

static void init_run(struct run *r, const struct config *c)
{
    /* Before any descriptor is created, which could take the number 0. */
    *r = (struct run){.cfg = c, .stdin_open = fcntl(STDIN_FILENO, F_GETFD) >= 0};
    parse_target(c, &r->target);
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0)
        die("epoll_create1");
    bool http = c->mode == MODE_HTTP;
    r->timeout_ns = seconds_to_ns(c->timeout);
    r->probe_interval_ns = http ? seconds_to_ns(c->probe_interval) : 0;
    /* A probe lasts --timeout at most (and a scan period more): enough slots
     * that one is always free when the next probe is due. */
    long probe_slots = r->probe_interval_ns ? (long)((r->timeout_ns + SCAN_NS) / r->probe_interval_ns) + 2 : 0;
    r->nslots = c->concurrency + probe_slots;
    r->slots = xmalloc((size_t)r->nslots * sizeof *r->slots);
    for (long i = 0; i < r->nslots; i++) /* http: `head` is allocated on first use */
        r->slots[i] = (struct slot){.fd = -1, .state = SLOT_DEAD, .probe = i >= c->concurrency};
    if (http) {
        r->request = make_http_request(c->path, &r->request_len);
        r->scratch = xmalloc(BODY_CHUNK);
    } else {
        r->request_len = message_size(r);
        r->request = make_request(r->request_len, c->line);
        r->scratch = xmalloc(message_size(r) + 1);
    }
    /* Scan at least once per --timeout, but not more often than epoll_wait's
     * millisecond resolution can wait for. */
    r->scan_ns = r->timeout_ns < SCAN_NS ? r->timeout_ns : SCAN_NS;
    if (r->scan_ns < NS_PER_MS)
        r->scan_ns = NS_PER_MS;
    r->window_open = now_ns();
    r->next_scan = r->window_open + r->scan_ns;
}

static void free_run(struct run *r)
{
    close(r->epfd);
    for (long i = 0; i < r->nslots; i++)
        free(r->slots[i].head);
    free(r->slots);
    free(r->request);
    free(r->scratch);
    free(r->latency.us);
    free(r->probe_latency.us);
}

int main(int argc, char **argv)
{
    struct config config;
    parse_args(argc, argv, &config);
    struct run run;
    init_run(&run, &config);
    raise_fd_limit();
    if (config.mode == MODE_IDLE)
        run_idle(&run);
    else if (config.mode == MODE_HTTP)
        run_http(&run);
    else
        run_load(&run);
    /* Closed before the result is printed: idle mode promises that order. */
    for (long i = 0; i < run.nslots; i++)
        close_slot(&run.slots[i]);
    print_result(&run);
    free_run(&run);
    return 0;
}
