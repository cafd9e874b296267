// SPDX-License-Identifier: MIT
/*
 * The Linux peer of `vtl bench tcp`: plain kernel TCP sockets, so the figures measure the
 * server under test (the stack or the kernel), not a Python client.
 *
 *   tcp_peer send -c IP -p PORT [-t SECONDS] [-n BYTES] [-b WRITE_BYTES]
 *       connect, write WRITE_BYTES buffers until SECONDS pass (or BYTES are sent), shut
 *       down the write side, then read until the server closes (all data was taken).
 *   tcp_peer recv -p PORT
 *       accept one connection, read until EOF, close. Says "ready" on stderr when listening.
 *   tcp_peer crr -c IP -p PORT [-t SECONDS] [-s SIZE]
 *       connect, write SIZE bytes, read SIZE bytes, close; again until SECONDS pass.
 *   tcp_peer rr -c IP -p PORT [-n ROUNDS] [-s SIZE] [-w WARMUP]
 *       one connection, SIZE-byte ping-pong ROUNDS times (after WARMUP untimed rounds).
 *
 * Each run prints one JSON line on stdout, with the CPU the peer itself used ("cpu_pct", of
 * one core over the measured span): near 100 means the peer, not the server, was the limit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_BUF (1 << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what)
{
	fprintf(stderr, "tcp_peer: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int connect_to(const struct sockaddr_in *sa, int nodelay)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		die("socket");
	if (nodelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int)))
		die("TCP_NODELAY");
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)))
		die("connect");
	return fd;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* Read exactly len bytes; 0 on success, -1 if the peer closed first. */
static int read_exact(int fd, char *buf, size_t len)
{
	while (len) {
		ssize_t n = read(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		if (n == 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static uint64_t drain(int fd, char *buf)
{
	uint64_t total = 0;
	ssize_t n;

	while ((n = read(fd, buf, RECV_BUF)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		total += (uint64_t)n;
	}
	return total;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double pct(const double *sorted, size_t n, double p)
{
	size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);

	return sorted[i < n ? i : n - 1];
}

static int run_send(const struct sockaddr_in *sa, double seconds, uint64_t limit,
		    size_t wbytes)
{
	char *buf = malloc(wbytes > RECV_BUF ? wbytes : RECV_BUF);
	uint64_t sent = 0, back;
	double t0, c0, secs;
	int fd;

	if (!buf)
		die("malloc");
	/* A fixed, non-trivial pattern: not all zeros, the same every run. */
	for (size_t i = 0; i < wbytes; i++)
		buf[i] = (char)(i * 2654435761u >> 13);
	fd = connect_to(sa, 0);
	t0 = now();
	c0 = cpu_seconds();
	while ((limit == 0 || sent < limit) && (seconds <= 0 || now() - t0 < seconds)) {
		size_t len = wbytes;

		if (limit && limit - sent < len)
			len = (size_t)(limit - sent);
		write_all(fd, buf, len);
		sent += len;
	}
	if (shutdown(fd, SHUT_WR))
		die("shutdown");
	back = drain(fd, buf); /* the server's FIN: it has read everything */
	secs = now() - t0;
	printf("{\"mode\": \"send\", \"bytes\": %llu, \"seconds\": %.6f, \"mbit_per_s\": %.1f, "
	       "\"unexpected_bytes_back\": %llu, \"cpu_pct\": %.1f}\n",
	       (unsigned long long)sent, secs, sent * 8 / secs / 1e6, (unsigned long long)back,
	       100.0 * (cpu_seconds() - c0) / secs);
	close(fd);
	free(buf);
	return 0;
}

static int run_recv(int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	char *buf = malloc(RECV_BUF);
	uint64_t total;
	double t0, c0, secs;
	int lfd, fd;

	if (!buf)
		die("malloc");
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &(int){1}, sizeof(int));
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 8))
		die("bind/listen");
	fprintf(stderr, "ready\n");
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		die("accept");
	t0 = now();
	c0 = cpu_seconds();
	total = drain(fd, buf);
	secs = now() - t0;
	close(fd);
	close(lfd);
	printf("{\"mode\": \"recv\", \"bytes\": %llu, \"seconds\": %.6f, \"mbit_per_s\": %.1f, "
	       "\"cpu_pct\": %.1f}\n",
	       (unsigned long long)total, secs, secs > 0 ? total * 8 / secs / 1e6 : 0.0,
	       secs > 0 ? 100.0 * (cpu_seconds() - c0) / secs : 0.0);
	free(buf);
	return 0;
}

static int run_crr(const struct sockaddr_in *sa, double seconds, size_t size)
{
	char *out = calloc(1, size), *in = malloc(size);
	size_t cap = 1 << 16, n = 0;
	double *lat = malloc(cap * sizeof(double));
	double t0, c0, secs, t;

	if (!out || !in || !lat)
		die("malloc");
	memset(out, 'c', size);
	t0 = now();
	c0 = cpu_seconds();
	while ((t = now()) - t0 < seconds) {
		int fd = connect_to(sa, 1);

		write_all(fd, out, size);
		if (read_exact(fd, in, size)) {
			fprintf(stderr, "tcp_peer: the server closed before answering\n");
			return 1;
		}
		close(fd);
		if (n == cap) {
			cap *= 2;
			lat = realloc(lat, cap * sizeof(double));
			if (!lat)
				die("realloc");
		}
		lat[n++] = now() - t;
	}
	secs = now() - t0;
	if (n == 0) {
		fprintf(stderr, "tcp_peer: no connection completed\n");
		return 1;
	}
	qsort(lat, n, sizeof(double), cmp_double);
	printf("{\"mode\": \"crr\", \"connections\": %zu, \"seconds\": %.6f, \"per_s\": %.1f, "
	       "\"conn_p50_us\": %.1f, \"conn_p99_us\": %.1f, \"cpu_pct\": %.1f}\n",
	       n, secs, n / secs, pct(lat, n, 50) * 1e6, pct(lat, n, 99) * 1e6,
	       100.0 * (cpu_seconds() - c0) / secs);
	return 0;
}

static int run_rr(const struct sockaddr_in *sa, size_t rounds, size_t warmup, size_t size)
{
	char *out = calloc(1, size), *in = malloc(size);
	double *lat = malloc(rounds * sizeof(double));
	double t0 = now(), c0 = cpu_seconds(), secs, sum = 0;
	int fd;

	if (!out || !in || !lat || rounds == 0)
		die("malloc");
	memset(out, 'r', size);
	fd = connect_to(sa, 1);
	for (size_t i = 0; i < warmup + rounds; i++) {
		double t = now();

		if (i == warmup) {
			t0 = t;
			c0 = cpu_seconds();
		}
		write_all(fd, out, size);
		if (read_exact(fd, in, size)) {
			fprintf(stderr, "tcp_peer: the server closed during round %zu\n", i);
			return 1;
		}
		if (i >= warmup)
			lat[i - warmup] = now() - t;
	}
	secs = now() - t0;
	close(fd);
	for (size_t i = 0; i < rounds; i++)
		sum += lat[i];
	qsort(lat, rounds, sizeof(double), cmp_double);
	printf("{\"mode\": \"rr\", \"rounds\": %zu, \"seconds\": %.6f, \"p50_us\": %.1f, "
	       "\"p99_us\": %.1f, \"mean_us\": %.1f, \"min_us\": %.1f, \"max_us\": %.1f, "
	       "\"cpu_pct\": %.1f}\n",
	       rounds, secs, pct(lat, rounds, 50) * 1e6, pct(lat, rounds, 99) * 1e6,
	       sum / rounds * 1e6, lat[0] * 1e6, lat[rounds - 1] * 1e6,
	       100.0 * (cpu_seconds() - c0) / secs);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: tcp_peer send|recv|crr|rr [-c IP] [-p PORT] [-t SECONDS] "
			"[-n BYTES|ROUNDS] [-s SIZE] [-b WRITE_BYTES] [-w WARMUP]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	const char *mode, *ip = NULL;
	double seconds = 0;
	unsigned long long count = 0;
	size_t size = 64, wbytes = 1 << 20, warmup = 100;
	int port = 0, opt;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "c:p:t:n:s:b:w:")) != -1) {
		switch (opt) {
		case 'c': ip = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'n': count = strtoull(optarg, NULL, 10); break;
		case 's': size = (size_t)atol(optarg); break;
		case 'b': wbytes = (size_t)atol(optarg); break;
		case 'w': warmup = (size_t)atol(optarg); break;
		default: usage();
		}
	}
	if (port <= 0 || port > 65535 || size == 0 || wbytes == 0)
		usage();
	/* A peer that writes to a reset connection reports the error, it does not die silently. */
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(mode, "recv"))
		return run_recv(port);
	if (!ip || inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
		usage();
	sa.sin_port = htons(port);
	/* A hung server must not hang the benchmark: SIGALRM ends the run with an error. */
	alarm((unsigned)(seconds + 60));
	if (!strcmp(mode, "send"))
		return seconds > 0 || count ? run_send(&sa, seconds, count, wbytes) : (usage(), 1);
	if (!strcmp(mode, "crr"))
		return seconds > 0 ? run_crr(&sa, seconds, size) : (usage(), 1);
	if (!strcmp(mode, "rr"))
		return run_rr(&sa, count ? count : 10000, warmup, size);
	usage();
	return 2;
}
