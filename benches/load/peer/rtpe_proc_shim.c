/*
 * rtpe_proc_shim.c: an LD_PRELOAD library that stands in for the /proc
 * interface of rtpengine's kernel module (xt_RTPENGINE), so that the
 * userspace rtpengine daemon and rtpengine-recording can record calls with
 * recording-method=proc on a machine whose kernel cannot load the module.
 *
 * Written for the callrec load benchmark (benches/load). Preload it into both
 * processes; each side recognises its own paths:
 *
 *   rtpengine (table = N):
 *     /proc/rtpengine/control      "del N" / "add N" are accepted.
 *     /proc/rtpengine/N/control    binary struct rtpengine_message commands
 *                                  (layout of rtpengine 10.5, checked at run
 *                                  time against the NOOP message):
 *       NOOP, ADD_TARGET, DEL_TARGET, ADD_DESTINATION  accepted, no effect:
 *           as with a loaded module that no iptables rule feeds, every packet
 *           still reaches rtpengine's sockets and is relayed in userspace.
 *       ADD_CALL (read)    allocates a call index for a call id.
 *       ADD_STREAM (read)  allocates a stream index for (call, stream name).
 *       PACKET (write)     the packet rtpengine hands to the "kernel" for
 *                          recording (fake IP+UDP header + RTP): it is sent as
 *                          one datagram to the recording daemon's socket for
 *                          that stream. Until the daemon has opened the stream,
 *                          up to 10 packets are held per stream, the oldest
 *                          dropped, like the module's stream_packets_list_limit.
 *       DEL_STREAM, DEL_CALL  send a zero-length datagram (the daemon reads it
 *                          as EOF) and forget the stream(s).
 *       GET_STATS, GET_RESET_STATS  answered with SSRC 0 and zero counters
 *                          (no kernel statistics; rtpengine ignores them).
 *   rtpengine-recording:
 *     open("/proc/rtpengine/N/calls/CALL/STREAM") returns a non-blocking
 *     AF_UNIX datagram socket bound to an abstract name derived from
 *     "N/CALL/STREAM". A read returns one packet, like the module's file.
 *     The socket's queue holds net.unix.max_dgram_qlen (default 10) datagrams,
 *     the module's default per-stream limit; when it is full the newest packet
 *     is dropped (the module drops the oldest): the count is the same.
 *
 * Nothing else is changed: relaying, the metadata files, decoding, mixing and
 * WAV writing stay the work of rtpengine and rtpengine-recording.
 *
 * Counters (packets handed over, dropped because the daemon's queue was full,
 * dropped before the daemon opened the stream, other errors) are written to
 * $RTPE_SHIM_STATS (key=value lines) at every DEL_CALL and at exit.
 * $RTPE_SHIM_DEBUG=1 logs commands to stderr.
 *
 * Build: gcc -O2 -shared -fPIC -o rtpe_proc_shim.so rtpe_proc_shim.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* rtpengine 10.5 struct rtpengine_message: enum cmd (4 bytes), then a union
 * aligned to 8 (its noop member starts with a size_t), then data[]. */
#define U_OFF 8
enum {
	REMG_NOOP = 1,
	REMG_ADD_TARGET,
	REMG_DEL_TARGET,
	REMG_ADD_DESTINATION,
	REMG_ADD_CALL,
	REMG_DEL_CALL,
	REMG_ADD_STREAM,
	REMG_DEL_STREAM,
	REMG_PACKET,
	REMG_GET_STATS,
	REMG_GET_RESET_STATS,
	REMG_LAST_EXPECTED, /* __REMG_LAST in 10.5 */
};

#define MAX_FDS 65536
#define MAX_CALLS 65536
#define MAX_STREAMS 262144
#define HOLD_PKTS 10
#define MAX_PKT 2048

enum { K_NONE = 0, K_GLOBAL, K_TABLE };

struct held_pkt {
	unsigned short len;
	unsigned char buf[MAX_PKT];
};

struct stream {
	int used;
	int opened; /* a send has succeeded: the daemon has the socket */
	unsigned int call_idx;
	struct sockaddr_un addr;
	socklen_t addrlen;
	struct held_pkt *held; /* ring of HOLD_PKTS, allocated on demand */
	int held_start, held_count;
	pthread_mutex_t lock;
};

struct call {
	int used;
	char id[256];
};

static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_open)(const char *, int, ...);
static int (*real_close)(int);

static unsigned char fd_kind[MAX_FDS];
static unsigned int table_id;
static size_t msg_size; /* sizeof(struct rtpengine_message), from NOOP */
static int debug;
static const char *stats_path;

static pthread_mutex_t tab_lock = PTHREAD_MUTEX_INITIALIZER;
static struct call *calls;
static struct stream *streams;
static unsigned int stream_hwm; /* streams[0..stream_hwm) may be in use */
static int send_fd = -1;

static unsigned long long st_packets, st_sent, st_queue_full, st_held, st_held_dropped,
	st_never_opened, st_errors, st_calls, st_streams;

static void dbg(const char *fmt, ...) {
	if (!debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "rtpe_proc_shim[%d]: ", getpid());
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

__attribute__((constructor)) static void shim_init(void) {
	real_read = dlsym(RTLD_NEXT, "read");
	real_write = dlsym(RTLD_NEXT, "write");
	real_open = dlsym(RTLD_NEXT, "open");
	real_close = dlsym(RTLD_NEXT, "close");
	debug = getenv("RTPE_SHIM_DEBUG") && *getenv("RTPE_SHIM_DEBUG") == '1';
	stats_path = getenv("RTPE_SHIM_STATS");
}

static void write_stats(void) {
	if (!stats_path || !calls)
		return;
	char tmp[4096], buf[1024];
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", stats_path, getpid());
	int n = snprintf(buf, sizeof(buf),
		"packets=%llu\nsent=%llu\nqueue_full=%llu\nheld=%llu\nheld_dropped=%llu\n"
		"never_opened=%llu\nerrors=%llu\ncalls=%llu\nstreams=%llu\n",
		__atomic_load_n(&st_packets, __ATOMIC_RELAXED), __atomic_load_n(&st_sent, __ATOMIC_RELAXED),
		__atomic_load_n(&st_queue_full, __ATOMIC_RELAXED), __atomic_load_n(&st_held, __ATOMIC_RELAXED),
		__atomic_load_n(&st_held_dropped, __ATOMIC_RELAXED),
		__atomic_load_n(&st_never_opened, __ATOMIC_RELAXED), __atomic_load_n(&st_errors, __ATOMIC_RELAXED),
		st_calls, st_streams);
	int fd = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (real_write(fd, buf, n) == n)
		rename(tmp, stats_path);
	real_close(fd);
}

__attribute__((destructor)) static void shim_fini(void) {
	write_stats();
}

/* abstract socket name for table/call/stream, shared by both processes */
static socklen_t stream_addr(struct sockaddr_un *sa, unsigned int table, const char *call, const char *name) {
	uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
	char key[600];
	int n = snprintf(key, sizeof(key), "%u/%s/%s", table, call, name);
	for (int i = 0; i < n && i < (int) sizeof(key); i++) {
		h ^= (unsigned char) key[i];
		h *= 1099511628211ULL;
	}
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	int len = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "rtpe-proc-shim/%016llx",
		(unsigned long long) h);
	return (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + len);
}

static int ensure_tables(void) {
	if (calls)
		return 0;
	calls = calloc(MAX_CALLS, sizeof(*calls));
	streams = calloc(MAX_STREAMS, sizeof(*streams));
	if (!calls || !streams)
		return -1;
	for (int i = 0; i < MAX_STREAMS; i++)
		pthread_mutex_init(&streams[i].lock, NULL);
	send_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int big = 64 << 20;
	setsockopt(send_fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	return send_fd < 0 ? -1 : 0;
}

/* --- rtpengine side -------------------------------------------------- */

static void stream_send(struct stream *s, const unsigned char *p, size_t len) {
	/* caller holds s->lock */
	if (s->held_count) {
		while (s->held_count) {
			struct held_pkt *hp = &s->held[s->held_start];
			if (sendto(send_fd, hp->buf, hp->len, MSG_DONTWAIT, (struct sockaddr *) &s->addr, s->addrlen) < 0)
				break;
			__atomic_add_fetch(&st_sent, 1, __ATOMIC_RELAXED);
			s->held_start = (s->held_start + 1) % HOLD_PKTS;
			s->held_count--;
			s->opened = 1;
		}
	}
	if (!s->held_count && sendto(send_fd, p, len, MSG_DONTWAIT, (struct sockaddr *) &s->addr, s->addrlen) >= 0) {
		s->opened = 1;
		__atomic_add_fetch(&st_sent, 1, __ATOMIC_RELAXED);
		return;
	}
	int e = errno;
	if (s->opened && (e == EAGAIN || e == EWOULDBLOCK)) {
		__atomic_add_fetch(&st_queue_full, 1, __ATOMIC_RELAXED);
		return;
	}
	if (s->opened && s->held_count == 0) {
		/* the daemon closed the stream */
		__atomic_add_fetch(&st_errors, 1, __ATOMIC_RELAXED);
		return;
	}
	/* not opened yet (ECONNREFUSED/ENOENT): hold like the module's list */
	if (len > MAX_PKT) {
		__atomic_add_fetch(&st_errors, 1, __ATOMIC_RELAXED);
		return;
	}
	if (!s->held) {
		s->held = malloc(sizeof(struct held_pkt) * HOLD_PKTS);
		if (!s->held) {
			__atomic_add_fetch(&st_errors, 1, __ATOMIC_RELAXED);
			return;
		}
	}
	if (s->held_count == HOLD_PKTS) {
		s->held_start = (s->held_start + 1) % HOLD_PKTS;
		s->held_count--;
		__atomic_add_fetch(&st_held_dropped, 1, __ATOMIC_RELAXED);
	}
	struct held_pkt *hp = &s->held[(s->held_start + s->held_count) % HOLD_PKTS];
	memcpy(hp->buf, p, len);
	hp->len = (unsigned short) len;
	s->held_count++;
	__atomic_add_fetch(&st_held, 1, __ATOMIC_RELAXED);
}

static void stream_end(struct stream *s) {
	/* caller holds tab_lock and s->lock */
	if (s->opened && !s->held_count)
		sendto(send_fd, "", 0, MSG_DONTWAIT, (struct sockaddr *) &s->addr, s->addrlen);
	else if (s->held_count || !s->opened)
		__atomic_add_fetch(&st_never_opened, (unsigned long long) s->held_count, __ATOMIC_RELAXED);
	free(s->held);
	s->held = NULL;
	s->held_count = s->held_start = 0;
	s->used = 0;
	s->opened = 0;
}

static ssize_t table_cmd(int fd, unsigned char *m, size_t len, int is_read) {
	(void) fd;
	if (len < U_OFF + 8) {
		errno = EINVAL;
		return -1;
	}
	int cmd;
	memcpy(&cmd, m, sizeof(cmd));
	unsigned char *u = m + U_OFF;
	unsigned int a, b;

	switch (cmd) {
	case REMG_NOOP: {
		size_t sz;
		int last;
		memcpy(&sz, u, sizeof(sz));
		memcpy(&last, u + sizeof(size_t), sizeof(last));
		msg_size = sz;
		if (last != REMG_LAST_EXPECTED || sz != len)
			fprintf(stderr, "rtpe_proc_shim: unexpected NOOP (size %zu, write %zu, last_cmd %d, expected %d):"
				" message layout differs from rtpengine 10.5\n", sz, len, last, REMG_LAST_EXPECTED);
		dbg("NOOP size %zu last_cmd %d", sz, last);
		return (ssize_t) len;
	}
	case REMG_ADD_TARGET:
	case REMG_DEL_TARGET:
	case REMG_ADD_DESTINATION:
		return (ssize_t) len;
	case REMG_ADD_CALL: {
		if (!is_read) {
			errno = EINVAL;
			return -1;
		}
		pthread_mutex_lock(&tab_lock);
		unsigned int idx = MAX_CALLS;
		for (unsigned int i = 0; i < MAX_CALLS; i++) {
			if (!calls[i].used) { /* lowest free index */
				idx = i;
				break;
			}
		}
		if (idx == MAX_CALLS) {
			pthread_mutex_unlock(&tab_lock);
			errno = ENOSPC;
			return -1;
		}
		calls[idx].used = 1;
		snprintf(calls[idx].id, sizeof(calls[idx].id), "%s", (char *) (u + 4));
		st_calls++;
		pthread_mutex_unlock(&tab_lock);
		memcpy(u, &idx, sizeof(idx));
		dbg("ADD_CALL %u %s", idx, calls[idx].id);
		return (ssize_t) len;
	}
	case REMG_DEL_CALL: {
		memcpy(&a, u, sizeof(a));
		if (a >= MAX_CALLS) {
			errno = EINVAL;
			return -1;
		}
		pthread_mutex_lock(&tab_lock);
		for (unsigned int i = 0; i < stream_hwm; i++) {
			struct stream *s = &streams[i]; /* used and call_idx change only under tab_lock */
			if (s->used && s->call_idx == a) {
				pthread_mutex_lock(&s->lock);
				stream_end(s);
				pthread_mutex_unlock(&s->lock);
			}
		}
		calls[a].used = 0;
		pthread_mutex_unlock(&tab_lock);
		dbg("DEL_CALL %u", a);
		write_stats();
		return (ssize_t) len;
	}
	case REMG_ADD_STREAM: {
		if (!is_read) {
			errno = EINVAL;
			return -1;
		}
		memcpy(&a, u, sizeof(a));
		const char *name = (const char *) (u + 12);
		pthread_mutex_lock(&tab_lock);
		if (a >= MAX_CALLS || !calls[a].used) {
			pthread_mutex_unlock(&tab_lock);
			errno = ENOENT;
			return -1;
		}
		unsigned int idx = MAX_STREAMS;
		for (unsigned int i = 0; i < MAX_STREAMS; i++) {
			if (!streams[i].used) { /* lowest free index */
				idx = i;
				break;
			}
		}
		if (idx == MAX_STREAMS) {
			pthread_mutex_unlock(&tab_lock);
			errno = ENOSPC;
			return -1;
		}
		if (idx + 1 > stream_hwm)
			stream_hwm = idx + 1;
		struct stream *s = &streams[idx];
		pthread_mutex_lock(&s->lock);
		s->used = 1;
		s->opened = 0;
		s->call_idx = a;
		s->held_count = s->held_start = 0;
		s->addrlen = stream_addr(&s->addr, table_id, calls[a].id, name);
		pthread_mutex_unlock(&s->lock);
		st_streams++;
		pthread_mutex_unlock(&tab_lock);
		memcpy(u + 4, &idx, sizeof(idx));
		dbg("ADD_STREAM %u call %u name %s", idx, a, name);
		return (ssize_t) len;
	}
	case REMG_DEL_STREAM: {
		memcpy(&b, u + 4, sizeof(b));
		if (b < MAX_STREAMS) {
			pthread_mutex_lock(&tab_lock);
			pthread_mutex_lock(&streams[b].lock);
			if (streams[b].used)
				stream_end(&streams[b]);
			pthread_mutex_unlock(&streams[b].lock);
			pthread_mutex_unlock(&tab_lock);
		}
		return (ssize_t) len;
	}
	case REMG_PACKET: {
		memcpy(&b, u + 4, sizeof(b));
		size_t off = msg_size ? msg_size : len;
		if (b >= MAX_STREAMS || off >= len) {
			errno = EINVAL;
			return -1;
		}
		__atomic_add_fetch(&st_packets, 1, __ATOMIC_RELAXED);
		struct stream *s = &streams[b];
		pthread_mutex_lock(&s->lock);
		if (s->used)
			stream_send(s, m + off, len - off);
		else
			__atomic_add_fetch(&st_errors, 1, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&s->lock);
		return (ssize_t) len;
	}
	default:
		errno = EINVAL;
		return -1;
	}
}

/* --- interposed libc functions --------------------------------------- */

static int starts(const char *s, const char *p) {
	return strncmp(s, p, strlen(p)) == 0;
}

int open(const char *path, int flags, ...) {
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (!real_open)
		shim_init();
	if (starts(path, "/proc/rtpengine/")) {
		const char *rest = path + strlen("/proc/rtpengine/");
		unsigned int t;
		char tail[512];
		if (strcmp(rest, "control") == 0) {
			int fd = real_open("/dev/null", O_RDWR | O_CLOEXEC);
			if (fd >= 0 && fd < MAX_FDS)
				fd_kind[fd] = K_GLOBAL;
			dbg("open %s -> %d", path, fd);
			return fd;
		}
		if (sscanf(rest, "%u/%511s", &t, tail) == 2) {
			if (strcmp(tail, "control") == 0) {
				if (ensure_tables()) {
					errno = ENOMEM;
					return -1;
				}
				table_id = t;
				int fd = real_open("/dev/null", O_RDWR | O_CLOEXEC);
				if (fd >= 0 && fd < MAX_FDS)
					fd_kind[fd] = K_TABLE;
				dbg("open %s -> %d", path, fd);
				return fd;
			}
			if (starts(tail, "calls/")) {
				/* recording daemon: calls/CALL/STREAM; CALL may not contain '/' */
				char *call = tail + strlen("calls/");
				char *slash = strrchr(call, '/');
				if (!slash) {
					errno = ENOENT;
					return -1;
				}
				*slash = '\0';
				struct sockaddr_un sa;
				socklen_t sl = stream_addr(&sa, t, call, slash + 1);
				int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
				if (fd < 0)
					return -1;
				if (bind(fd, (struct sockaddr *) &sa, sl) < 0) {
					int e = errno;
					real_close(fd);
					errno = e;
					dbg("open %s: bind failed: %s", path, strerror(e));
					return -1;
				}
				dbg("open %s -> socket %d", path, fd);
				return fd;
			}
		}
		/* blist and anything else: as if absent */
		errno = ENOENT;
		return -1;
	}
	return real_open(path, flags, mode);
}

ssize_t write(int fd, const void *buf, size_t count) {
	if (!real_write)
		shim_init();
	if (fd >= 0 && fd < MAX_FDS && fd_kind[fd]) {
		if (fd_kind[fd] == K_GLOBAL) {
			dbg("global control: %.*s", (int) count, (const char *) buf);
			return (ssize_t) count;
		}
		return table_cmd(fd, (unsigned char *) buf, count, 0);
	}
	return real_write(fd, buf, count);
}

ssize_t read(int fd, void *buf, size_t count) {
	if (!real_read)
		shim_init();
	if (fd >= 0 && fd < MAX_FDS && fd_kind[fd] == K_TABLE) {
		int cmd;
		if (count < sizeof(cmd)) {
			errno = EINVAL;
			return -1;
		}
		memcpy(&cmd, buf, sizeof(cmd));
		if (cmd == REMG_GET_STATS || cmd == REMG_GET_RESET_STATS) {
			/* no kernel statistics: answer with SSRC 0, which rtpengine
			 * takes as "not this stream" without logging an error */
			if (count > U_OFF + 24)
				memset((unsigned char *) buf + U_OFF + 24, 0, count - U_OFF - 24);
			return (ssize_t) count;
		}
		return table_cmd(fd, buf, count, 1);
	}
	return real_read(fd, buf, count);
}

int close(int fd) {
	if (!real_close)
		shim_init();
	if (fd >= 0 && fd < MAX_FDS)
		fd_kind[fd] = K_NONE;
	return real_close(fd);
}
