/*
 * echo_server: the reference server of the reactor benchmark.
 *
 * Every Python contender is measured against this server (contract:
 * bench/LOADGEN.md).  One thread, one epoll instance, non-blocking sockets,
 * level-triggered: a stream connection is watched for input while it has no
 * unsent echo, and for output only while it has, so a client that does not
 * read its replies stalls its own connection instead of growing a buffer.
 * SIGTERM and SIGINT arrive through a signalfd in the same epoll set.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BACKLOG 1024
#define MAX_EVENTS 256
/* Accepts or datagrams handled per wakeup, so a flood cannot starve the
 * other sockets or the signalfd; level-triggered epoll reports the rest. */
#define BATCH 64
/* Larger than any datagram the benchmark sends (a Unix datagram is bounded
 * by the default send buffer, about 208 KiB). */
#define BUF_SIZE (256 * 1024)
/* How long accepting pauses when the process is out of descriptors. */
#define PAUSE_MS 10
#define COUNT(array) ((int)(sizeof(array) / sizeof((array)[0])))

enum transport { TR_TCP, TR_UNIX, TR_UDP, TR_UNIXDGRAM };
static const char *const transport_names[] = {"tcp", "unix", "udp", "unixdgram"};

struct conn {
    bool open;
    char *unsent; /* echo bytes the kernel did not take yet */
    size_t len, off;
};

struct server {
    enum transport transport;
    int epfd, sigfd;
    int fd;                 /* listening or datagram socket */
    bool accepting_paused;  /* out of descriptors: the listener is not watched */
    struct conn *conns;     /* indexed by fd */
    size_t nconns;
    unsigned long dropped;  /* datagram replies the kernel refused */
    char buf[BUF_SIZE];
};

/* The unix socket file this process created: removed on every exit path. */
static const char *created_path;

static void die(const char *what)
{
    fprintf(stderr, "echo_server: %s: %s\n", what, strerror(errno));
    if (created_path)
        unlink(created_path);
    exit(1);
}

static const char usage[] = "usage: echo_server --transport tcp|unix|udp|unixdgram --address ADDR\n";

static void __attribute__((noreturn, format(printf, 1, 2))) bad_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("echo_server: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fputs(usage, stderr);
    exit(2);
}

/* ---- addresses ---------------------------------------------------------- */

/* HOST:PORT with an IPv4 literal, or [IPv6]:PORT; port 0 picks a free one. */
static bool parse_inet(const char *text, struct sockaddr_storage *ss, socklen_t *len)
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
    if (*end || number > 65535)
        return false;

    memset(ss, 0, sizeof *ss);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)number);
        *len = sizeof *a;
        return inet_pton(AF_INET6, buf, &a->sin6_addr) == 1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)number);
    *len = sizeof *a;
    return inet_pton(AF_INET, buf, &a->sin_addr) == 1;
}

static bool parse_unix(const char *path, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_un *a = (struct sockaddr_un *)ss;
    size_t path_len = strlen(path);
    if (path_len == 0 || path_len >= sizeof a->sun_path)
        return false;
    memset(ss, 0, sizeof *ss);
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path, path, path_len + 1);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + 1);
    return true;
}

/* The bound address in --address syntax, for READY. */
static void format_bound(int fd, const char *requested, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        die("getsockname");
    char host[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        snprintf(out, size, "%s:%u", host, ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        snprintf(out, size, "[%s]:%u", host, ntohs(a->sin6_port));
    } else {
        snprintf(out, size, "%s", requested);
    }
}

/* ---- setup -------------------------------------------------------------- */

static void parse_args(int argc, char **argv, enum transport *transport, const char **address)
{
    static const struct option options[] = {
        {"transport", required_argument, NULL, 't'},
        {"address", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int chosen = -1, opt;
    *address = NULL;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs(usage, stdout);
            exit(0);
        }
        if (opt == 'a') {
            *address = optarg;
            continue;
        }
        if (opt != 't')
            bad_usage("bad or incomplete option '%s'", argv[optind - 1]);
        for (int i = 0; i < COUNT(transport_names); i++)
            if (strcmp(optarg, transport_names[i]) == 0)
                chosen = i;
        if (chosen < 0)
            bad_usage("--transport: unknown value '%s'", optarg);
    }
    if (optind < argc)
        bad_usage("unexpected argument '%s'", argv[optind]);
    if (chosen < 0 || !*address)
        bad_usage("--transport and --address are required");
    *transport = (enum transport)chosen;
}

/* Creates and binds the server socket; exits 2 if the address is unusable. */
static int bind_server(struct server *s, const char *address)
{
    bool stream = s->transport == TR_TCP || s->transport == TR_UNIX;
    bool inet = s->transport == TR_TCP || s->transport == TR_UDP;
    struct sockaddr_storage ss;
    socklen_t len;
    if (!(inet ? parse_inet(address, &ss, &len) : parse_unix(address, &ss, &len)))
        bad_usage("--address: cannot parse '%s' as %s", address,
                  inet ? "HOST:PORT or [IPV6]:PORT" : "a socket path");

    int type = (stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    int fd = socket(ss.ss_family, type, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    if (stream && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt(SO_REUSEADDR)");
    /* For a unix path, bind() itself refuses an existing file (EADDRINUSE):
     * never unlink what this process did not create. */
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        int err = errno;
        fprintf(stderr, "echo_server: cannot bind %s: %s%s\n", address, strerror(err),
                err == EADDRINUSE && !inet ? " (the path exists)" : "");
        exit(2);
    }
    if (!inet)
        created_path = address;
    if (stream && listen(fd, BACKLOG) < 0)
        die("listen");
    return fd;
}

/* SIGTERM/SIGINT become readable events; blocked first so none is lost. */
static int make_signalfd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        die("sigprocmask");
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        die("signalfd");
    return fd;
}

static void watch(struct server *s, int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(s->epfd, op, fd, &ev) < 0)
        die("epoll_ctl");
}

/* Idle benchmarks hold thousands of connections; the soft limit is often 1024. */
static void raise_fd_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit); /* best effort: accept() pauses on EMFILE */
    }
}

/* ---- stream connections ------------------------------------------------- */

static struct conn *conn_slot(struct server *s, int fd)
{
    if ((size_t)fd >= s->nconns) {
        size_t n = s->nconns ? s->nconns : 1024;
        while (n <= (size_t)fd)
            n *= 2;
        struct conn *grown = realloc(s->conns, n * sizeof *grown);
        if (!grown)
            die("realloc");
        memset(grown + s->nconns, 0, (n - s->nconns) * sizeof *grown);
        s->conns = grown;
        s->nconns = n;
    }
    return &s->conns[fd];
}

static void close_conn(struct server *s, int fd)
{
    struct conn *c = &s->conns[fd];
    free(c->unsent);
    *c = (struct conn){0};
    close(fd);
}

static void accept_conns(struct server *s)
{
    int one = 1;
    for (int i = 0; i < BATCH; i++) {
        int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Level-triggered, the listener would wake us at once
                 * again: leave it out of the next wait (see serve()). */
                s->accepting_paused = true;
                watch(s, EPOLL_CTL_MOD, s->fd, 0);
            }
            return; /* EAGAIN, or the connection died in the queue */
        }
        /* An echo of a large request goes out in pieces; without NODELAY
         * Nagle would hold the last piece until the client's delayed ACK. */
        if (s->transport == TR_TCP)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_slot(s, fd)->open = true;
        watch(s, EPOLL_CTL_ADD, fd, EPOLLIN);
    }
}

/* Sends what it can of data; keeps the rest and switches the connection to
 * waiting for output.  False if the connection failed. */
static bool echo(struct server *s, int fd, const char *data, size_t len)
{
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR)
        return false;
    size_t sent = n > 0 ? (size_t)n : 0;
    if (sent == len)
        return true;
    struct conn *c = &s->conns[fd];
    c->unsent = malloc(len - sent);
    if (!c->unsent)
        die("malloc");
    memcpy(c->unsent, data + sent, len - sent);
    c->len = len - sent;
    c->off = 0;
    watch(s, EPOLL_CTL_MOD, fd, EPOLLOUT);
    return true;
}

static void on_readable(struct server *s, int fd)
{
    ssize_t n = recv(fd, s->buf, sizeof s->buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0 || !echo(s, fd, s->buf, (size_t)n))
        close_conn(s, fd);
}

static void on_writable(struct server *s, int fd)
{
    struct conn *c = &s->conns[fd];
    ssize_t n = send(fd, c->unsent + c->off, c->len - c->off, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            close_conn(s, fd);
        return;
    }
    c->off += (size_t)n;
    if (c->off < c->len)
        return;
    free(c->unsent);
    c->unsent = NULL;
    c->len = c->off = 0;
    watch(s, EPOLL_CTL_MOD, fd, EPOLLIN);
}

static void on_conn_event(struct server *s, int fd, uint32_t events)
{
    if (s->conns[fd].unsent)
        on_writable(s, fd); /* EPOLLERR/EPOLLHUP surface as a send error */
    else if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(s, fd);
}

/* ---- datagrams ---------------------------------------------------------- */

static void echo_datagrams(struct server *s)
{
    for (int i = 0; i < BATCH; i++) {
        struct sockaddr_storage from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(s->fd, s->buf, sizeof s->buf, 0, (struct sockaddr *)&from, &from_len);
        if (n < 0)
            return; /* EAGAIN; nothing else is worth stopping the server for */
        /* An unbound Unix sender has no address to reply to. */
        bool addressed = s->transport == TR_UDP || from_len > sizeof(sa_family_t);
        /* A full client queue (EAGAIN) or a vanished client: drop the reply,
         * as a datagram network would. */
        if (!addressed || sendto(s->fd, s->buf, (size_t)n, MSG_NOSIGNAL,
                                 (struct sockaddr *)&from, from_len) < 0)
            s->dropped++;
    }
}

/* ---- main loop ---------------------------------------------------------- */

static void serve(struct server *s)
{
    bool stream = s->transport == TR_TCP || s->transport == TR_UNIX;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        /* Out of descriptors, accepting waits one turn, at most PAUSE_MS. */
        int n = epoll_wait(s->epfd, events, MAX_EVENTS, s->accepting_paused ? PAUSE_MS : -1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        if (s->accepting_paused) {
            s->accepting_paused = false;
            watch(s, EPOLL_CTL_MOD, s->fd, EPOLLIN);
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == s->sigfd)
                return;
            if (fd != s->fd)
                on_conn_event(s, fd, events[i].events);
            else if (stream)
                accept_conns(s);
            else
                echo_datagrams(s);
        }
    }
}

static void shut_down(struct server *s)
{
    for (size_t fd = 0; fd < s->nconns; fd++)
        if (s->conns[fd].open) {
            free(s->conns[fd].unsent);
            close((int)fd);
        }
    free(s->conns);
    close(s->fd);
    if (created_path && unlink(created_path) < 0)
        fprintf(stderr, "echo_server: unlink %s: %s\n", created_path, strerror(errno));
    if (s->dropped)
        fprintf(stderr, "echo_server: %lu datagram replies dropped\n", s->dropped);
}

int main(int argc, char **argv)
{
    static struct server server; /* the I/O buffer makes it too big for the stack */
    const char *address;
    parse_args(argc, argv, &server.transport, &address);
    server.sigfd = make_signalfd();
    raise_fd_limit();
    server.fd = bind_server(&server, address);
    server.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (server.epfd < 0)
        die("epoll_create1");
    watch(&server, EPOLL_CTL_ADD, server.sigfd, EPOLLIN);
    watch(&server, EPOLL_CTL_ADD, server.fd, EPOLLIN);

    char bound[sizeof(struct sockaddr_un) + INET6_ADDRSTRLEN + 16];
    format_bound(server.fd, address, bound, sizeof bound);
    printf("READY %s\n", bound);
    fflush(stdout);

    serve(&server);
    shut_down(&server);
    return 0;
}
