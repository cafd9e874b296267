// SPDX-License-Identifier: MIT
/*
 * C reference for the AF_XDP port: the same rings, driven the same way as
 * vtlstack/_port.pyx (libxdp xsk.h, UMEM of 4096 x 2048-byte frames, 2048-entry rings,
 * XDP_COPY | XDP_USE_NEED_WAKEUP, a free-frame stack, batch 64), with the same steering
 * object (vtlstack/_bpf/steer.bpf.o, map layout from steer.h) attached through libxdp.
 *
 *   xsk_ref rxdrop -i IF -o steer.bpf.o [-p PORT] [-t SECONDS]
 *   xsk_ref echo   -i IF -o steer.bpf.o [-p PORT] [-t SECONDS]
 *   xsk_ref gen    -i IF -o steer.bpf.o -m DST_MAC -D DST_IP -s SRC_IP [-p DST_PORT]
 *                  [-P SRC_PORT] [-S FRAME_BYTES] [-t SECONDS]
 *   xsk_ref kdrop  -p PORT [-t SECONDS]      (kernel UDP socket, recvmmsg)
 *   xsk_ref kecho  -p PORT [-t SECONDS]      (kernel UDP socket, recvmmsg + sendmmsg)
 *
 * Each run prints one JSON line: packet counts, the seconds measured and the pps. Receivers
 * also report the span between their first and last packet ("active_s"), so a receiver
 * started before the generator is not charged for its idle start.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

#include "steer.h"

#define FRAME_COUNT 4096
#define FRAME_SIZE 2048
#define RING_SIZE 2048
#define MAX_BATCH 256

static volatile sig_atomic_t stop;
static unsigned int batch = 64;

struct port {
	struct xsk_ring_prod fill, tx;
	struct xsk_ring_cons comp, rx;
	struct xsk_umem *umem;
	struct xsk_socket *xsk;
	uint8_t *area;
	uint64_t free_stack[FRAME_COUNT];
	uint32_t free_top;
	uint32_t in_fill;  /* on the fill ring or filled and waiting on the RX ring */
	uint32_t in_tx;
	int fd;
};

static struct xdp_program *prog;
static int prog_ifindex;
static enum xdp_attach_mode prog_mode;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds (user + system) this process has used: the receiver's cost per packet. */
static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec * 1e-6;
}

static void detach(void)
{
	if (!prog)
		return;
	xdp_program__detach(prog, prog_ifindex, prog_mode, 0);
	xdp_program__close(prog);
	prog = NULL;
}

static void die(const char *what, int err)
{
	fprintf(stderr, "xsk_ref: %s: %s\n", what, strerror(err < 0 ? -err : err));
	detach();
	exit(1);
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* Attach steer.bpf.o through libxdp, own (proto, port), return the XSKMAP fd. */
static int steer(const char *obj, int ifindex, enum xdp_attach_mode mode, uint8_t proto,
		 uint16_t port)
{
	struct steer_key key = {.port = port, .proto = proto};
	struct steer_val val = {.flags = 1};
	struct bpf_object *bo;
	int err, fd;

	prog = xdp_program__open_file(obj, "xdp", NULL);
	err = libxdp_get_error(prog);
	if (err) {
		prog = NULL;
		die("open steering object", err);
	}
	err = xdp_program__attach(prog, ifindex, mode, 0);
	if (err) {
		xdp_program__close(prog);
		prog = NULL;
		die("attach steering (is another XDP program attached?)", err);
	}
	prog_ifindex = ifindex;
	prog_mode = xdp_program__is_attached(prog, ifindex);
	bo = xdp_program__bpf_obj(prog);
	fd = bpf_map__fd(bpf_object__find_map_by_name(bo, "owned_ports"));
	if (fd < 0 || bpf_map_update_elem(fd, &key, &val, 0))
		die("own port", errno);
	fd = bpf_map__fd(bpf_object__find_map_by_name(bo, "xsks_map"));
	if (fd < 0)
		die("xsks_map", EINVAL);
	return fd;
}

static void port_open(struct port *p, const char *ifname, int xsks_map_fd)
{
	struct xsk_umem_config ucfg = {
		.fill_size = RING_SIZE, .comp_size = RING_SIZE, .frame_size = FRAME_SIZE,
	};
	struct xsk_socket_config scfg = {
		.rx_size = RING_SIZE, .tx_size = RING_SIZE,
		.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
		.bind_flags = XDP_USE_NEED_WAKEUP | XDP_COPY,
	};
	int err;
	uint32_t i;

	p->area = mmap(NULL, (size_t)FRAME_COUNT * FRAME_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p->area == MAP_FAILED)
		die("mmap UMEM", errno);
	err = xsk_umem__create(&p->umem, p->area, (uint64_t)FRAME_COUNT * FRAME_SIZE,
			       &p->fill, &p->comp, &ucfg);
	if (err)
		die("xsk_umem__create", err);
	err = xsk_socket__create(&p->xsk, ifname, 0, p->umem, &p->rx, &p->tx, &scfg);
	if (err)
		die("xsk_socket__create", err);
	err = xsk_socket__update_xskmap(p->xsk, xsks_map_fd);
	if (err)
		die("xsk_socket__update_xskmap", err);
	p->fd = xsk_socket__fd(p->xsk);
	for (i = 0; i < FRAME_COUNT; i++)
		p->free_stack[i] = (uint64_t)(FRAME_COUNT - 1 - i) * FRAME_SIZE;
	p->free_top = FRAME_COUNT;
}

static void port_close(struct port *p)
{
	xsk_socket__delete(p->xsk);
	xsk_umem__delete(p->umem);
	munmap(p->area, (size_t)FRAME_COUNT * FRAME_SIZE);
}

static inline void put_free(struct port *p, uint64_t addr)
{
	p->free_stack[p->free_top++] = addr - addr % FRAME_SIZE;
}

/* Same policy as XskPort.refill: the kernel's share (fill ring + unread RX ring) is capped
 * at the fill ring size, the rest of the UMEM stays free for TX. */
static void refill(struct port *p)
{
	uint32_t n, i, idx = 0, budget;

	if (!p->free_top || p->in_fill >= p->fill.size)
		return;
	budget = p->fill.size - p->in_fill;
	if (budget > p->free_top)
		budget = p->free_top;
	n = xsk_prod_nb_free(&p->fill, budget);
	if (n > budget)
		n = budget;
	if (!n || xsk_ring_prod__reserve(&p->fill, n, &idx) != n)
		return;
	for (i = 0; i < n; i++)
		*xsk_ring_prod__fill_addr(&p->fill, idx + i) = p->free_stack[--p->free_top];
	xsk_ring_prod__submit(&p->fill, n);
	p->in_fill += n;
	if (xsk_ring_prod__needs_wakeup(&p->fill))
		recvfrom(p->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
}

static inline void kick(struct port *p)
{
	if (xsk_ring_prod__needs_wakeup(&p->tx))
		sendto(p->fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
}

static void complete(struct port *p)
{
	uint32_t n, i, idx = 0;

	n = xsk_ring_cons__peek(&p->comp, p->comp.size, &idx);
	for (i = 0; i < n; i++)
		put_free(p, *xsk_ring_cons__comp_addr(&p->comp, idx + i));
	if (n)
		xsk_ring_cons__release(&p->comp, n);
	p->in_tx -= n;
	if (p->in_tx)
		kick(p);
}

static void wait_in(struct port *p, int ms)
{
	struct pollfd pfd = {.fd = p->fd, .events = POLLIN};

	poll(&pfd, 1, ms);
}

static int idle_ms(double deadline)
{
	double left = deadline - now();

	return left < 0.1 ? (int)(left * 1000) + 1 : 100;
}

struct result {
	uint64_t rx, tx;
	double first, last;
};

static void seen(struct result *r, uint32_t n)
{
	if (!n)
		return;
	if (!r->rx)
		r->first = now();
	r->rx += n;
	r->last = now();
}

static int udp_turn_around(uint8_t *f, uint32_t len)
{
	uint8_t tmp[6];
	uint32_t ihl;

	if (len < 42 || f[12] != 0x08 || f[13] != 0x00 || f[14] >> 4 != 4 || f[23] != 17)
		return 0;
	ihl = (f[14] & 0x0F) * 4;
	if (ihl < 20 || len < 14 + ihl + 8)
		return 0;
	memcpy(tmp, f, 6), memcpy(f, f + 6, 6), memcpy(f + 6, tmp, 6);
	memcpy(tmp, f + 26, 4), memcpy(f + 26, f + 30, 4), memcpy(f + 30, tmp, 4);
	memcpy(tmp, f + 14 + ihl, 2), memcpy(f + 14 + ihl, f + 16 + ihl, 2);
	memcpy(f + 16 + ihl, tmp, 2);
	return 1;
}

static void run_rx(struct port *p, double seconds, int echo, struct result *r)
{
	double deadline = now() + seconds;
	uint32_t n, i, m, idx = 0, tidx = 0;
	uint64_t out_addr[MAX_BATCH];
	uint32_t out_len[MAX_BATCH];

	while (!stop) {
		if (echo)
			complete(p);
		refill(p);
		n = xsk_ring_cons__peek(&p->rx, batch, &idx);
		p->in_fill -= n;
		m = 0;
		for (i = 0; i < n; i++) {
			const struct xdp_desc *d = xsk_ring_cons__rx_desc(&p->rx, idx + i);

			if (echo && udp_turn_around(p->area + d->addr, d->len)) {
				out_addr[m] = d->addr;
				out_len[m++] = d->len;
			} else {
				put_free(p, d->addr);
			}
		}
		if (n)
			xsk_ring_cons__release(&p->rx, n);
		seen(r, n);
		if (m) {
			uint32_t room = xsk_prod_nb_free(&p->tx, m);

			if (room < m) {
				complete(p);
				room = xsk_prod_nb_free(&p->tx, m);
			}
			if (room > m)
				room = m;
			if (room && xsk_ring_prod__reserve(&p->tx, room, &tidx) == room) {
				for (i = 0; i < room; i++) {
					struct xdp_desc *t = xsk_ring_prod__tx_desc(&p->tx, tidx + i);

					t->addr = out_addr[i];
					t->len = out_len[i];
					t->options = 0;
				}
				xsk_ring_prod__submit(&p->tx, room);
				p->in_tx += room;
				r->tx += room;
				kick(p);
			} else {
				room = 0;
			}
			for (i = room; i < m; i++)
				put_free(p, out_addr[i]);
		}
		if (now() >= deadline)
			break;
		if (!n)
			wait_in(p, echo && p->in_tx ? 1 : idle_ms(deadline));
	}
}

static uint16_t csum16(const void *data, size_t len)
{
	const uint16_t *w = data;
	uint32_t s = 0;

	for (; len > 1; len -= 2)
		s += *w++;
	if (len)
		s += *(const uint8_t *)w;
	while (s >> 16)
		s = (s & 0xFFFF) + (s >> 16);
	return (uint16_t)~s;
}

static uint32_t build_udp(uint8_t *f, uint32_t size, const uint8_t *dmac, const uint8_t *smac,
			  uint32_t sip, uint32_t dip, uint16_t sport, uint16_t dport)
{
	struct ethhdr *eth = (void *)f;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	uint32_t payload = size - sizeof(*eth) - sizeof(*ip) - sizeof(*udp);

	memcpy(eth->h_dest, dmac, 6);
	memcpy(eth->h_source, smac, 6);
	eth->h_proto = htons(ETH_P_IP);
	memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = htons(size - sizeof(*eth));
	ip->frag_off = htons(0x4000);
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = sip;
	ip->daddr = dip;
	ip->check = csum16(ip, sizeof(*ip));
	udp->source = htons(sport);
	udp->dest = htons(dport);
	udp->len = htons(sizeof(*udp) + payload);
	udp->check = 0;  /* optional over IPv4; the receivers do not verify it */
	memset(udp + 1, 0xA5, payload);
	return size;
}

/* TX at full speed from frames [FRAME_COUNT/2, FRAME_COUNT) holding prebuilt packets;
 * the lower half feeds the fill ring for the echoed replies. */
static void run_gen(struct port *p, double seconds, uint32_t size, const uint8_t *dmac,
		    const uint8_t *smac, uint32_t sip, uint32_t dip, uint16_t sport,
		    uint16_t dport, struct result *r, double *sent_s)
{
	uint64_t tx_stack[FRAME_COUNT / 2];
	uint32_t tx_top = 0, i, n, idx = 0;
	double start, deadline;

	p->free_top = 0;
	for (i = 0; i < FRAME_COUNT / 2; i++)
		p->free_stack[p->free_top++] = (uint64_t)i * FRAME_SIZE;
	for (i = FRAME_COUNT / 2; i < FRAME_COUNT; i++) {
		build_udp(p->area + (uint64_t)i * FRAME_SIZE, size, dmac, smac, sip, dip, sport,
			  dport);
		tx_stack[tx_top++] = (uint64_t)i * FRAME_SIZE;
	}
	start = now();
	deadline = start + seconds;
	while (!stop && now() < deadline) {
		/* completions return TX frames to the TX stack (their packets are intact) */
		n = xsk_ring_cons__peek(&p->comp, p->comp.size, &idx);
		for (i = 0; i < n; i++)
			tx_stack[tx_top++] = *xsk_ring_cons__comp_addr(&p->comp, idx + i);
		if (n)
			xsk_ring_cons__release(&p->comp, n);
		p->in_tx -= n;

		n = tx_top < batch ? tx_top : batch;
		if (n && xsk_ring_prod__reserve(&p->tx, n, &idx) == n) {
			for (i = 0; i < n; i++) {
				struct xdp_desc *t = xsk_ring_prod__tx_desc(&p->tx, idx + i);

				t->addr = tx_stack[--tx_top];
				t->len = size;
				t->options = 0;
			}
			xsk_ring_prod__submit(&p->tx, n);
			p->in_tx += n;
			r->tx += n;
		}
		kick(p);

		refill(p);
		n = xsk_ring_cons__peek(&p->rx, batch, &idx);
		p->in_fill -= n;
		for (i = 0; i < n; i++)
			put_free(p, xsk_ring_cons__rx_desc(&p->rx, idx + i)->addr);
		if (n)
			xsk_ring_cons__release(&p->rx, n);
		seen(r, n);
	}
	*sent_s = now() - start;
	/* Replies still in flight: collect them for a moment without sending. */
	deadline = now() + 0.2;
	while (!stop && now() < deadline) {
		refill(p);
		n = xsk_ring_cons__peek(&p->rx, batch, &idx);
		p->in_fill -= n;
		for (i = 0; i < n; i++)
			put_free(p, xsk_ring_cons__rx_desc(&p->rx, idx + i)->addr);
		if (n)
			xsk_ring_cons__release(&p->rx, n);
		seen(r, n);
		if (!n)
			wait_in(p, 10);
	}
}

static void run_kernel(uint16_t port, double seconds, int echo, struct result *r)
{
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	static uint8_t bufs[MAX_BATCH][2048];
	struct sockaddr_in from[MAX_BATCH];
	struct mmsghdr msgs[MAX_BATCH];
	struct iovec iov[MAX_BATCH];
	double deadline = now() + seconds;
	int fd, n, i, sent;

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)))
		die("bind kernel UDP socket", errno);
	while (!stop && now() < deadline) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};

		for (i = 0; i < (int)batch; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof(bufs[i]);
			memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
		}
		n = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
		if (n <= 0) {
			poll(&pfd, 1, idle_ms(deadline));
			continue;
		}
		seen(r, n);
		if (echo) {
			for (i = 0; i < n; i++)
				iov[i].iov_len = msgs[i].msg_len;
			sent = sendmmsg(fd, msgs, n, MSG_DONTWAIT);
			if (sent > 0)
				r->tx += sent;
		}
	}
	close(fd);
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static void if_mac(const char *ifname, uint8_t *mac)
{
	struct ifreq ifr = {0};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (fd < 0 || ioctl(fd, SIOCGIFHWADDR, &ifr))
		die("SIOCGIFHWADDR", errno);
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	close(fd);
}

static void usage(void)
{
	fprintf(stderr, "usage: xsk_ref rxdrop|echo|gen|kdrop|kecho [-i IF] [-o OBJ] [-p PORT] "
			"[-P SRC_PORT] [-t SECONDS] [-b BATCH] [-S FRAME_BYTES] [-m DST_MAC] "
			"[-D DST_IP] [-s SRC_IP] [-x auto|skb|drv]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *mode, *ifname = NULL, *obj = NULL;
	uint16_t port = 9000, sport = 9001;
	uint32_t size = 64, sip = 0, dip = 0;
	uint8_t dmac[6] = {0}, smac[6];
	enum xdp_attach_mode xmode = XDP_MODE_UNSPEC;
	double seconds = 5, sent_s = 0, span, cpu0 = 0, cpu = 0;
	struct result r = {0};
	static struct port p;
	int opt, xsk;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "i:o:p:P:t:b:S:m:D:s:x:")) != -1) {
		switch (opt) {
		case 'i': ifname = optarg; break;
		case 'o': obj = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'P': sport = atoi(optarg); break;
		case 't': seconds = atof(optarg); break;
		case 'b': batch = atoi(optarg); break;
		case 'S': size = atoi(optarg); break;
		case 'm': if (parse_mac(optarg, dmac)) usage(); break;
		case 'D': dip = inet_addr(optarg); break;
		case 's': sip = inet_addr(optarg); break;
		case 'x':
			xmode = !strcmp(optarg, "skb") ? XDP_MODE_SKB :
				!strcmp(optarg, "drv") ? XDP_MODE_NATIVE : XDP_MODE_UNSPEC;
			break;
		default: usage();
		}
	}
	if (!batch || batch > MAX_BATCH || size < 42 || size > FRAME_SIZE - 256)
		usage();
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);

	xsk = !strcmp(mode, "rxdrop") || !strcmp(mode, "echo") || !strcmp(mode, "gen");
	if (xsk) {
		int map_fd;

		if (!ifname || !obj)
			usage();
		/* gen owns its source port so the echoed replies come back to its socket */
		map_fd = steer(obj, if_nametoindex(ifname), xmode, IPPROTO_UDP,
			       !strcmp(mode, "gen") ? sport : port);
		port_open(&p, ifname, map_fd);
		fprintf(stderr, "ready\n");
		cpu0 = cpu_s();
		if (!strcmp(mode, "gen")) {
			if (!dip || !sip)
				usage();
			if_mac(ifname, smac);
			run_gen(&p, seconds, size, dmac, smac, sip, dip, sport, port, &r, &sent_s);
		} else {
			run_rx(&p, seconds, !strcmp(mode, "echo"), &r);
		}
		cpu = cpu_s() - cpu0;
		port_close(&p);
		detach();
	} else if (!strcmp(mode, "kdrop") || !strcmp(mode, "kecho")) {
		fprintf(stderr, "ready\n");
		cpu0 = cpu_s();
		run_kernel(port, seconds, !strcmp(mode, "kecho"), &r);
		cpu = cpu_s() - cpu0;
	} else {
		usage();
	}
	span = r.rx > 1 ? r.last - r.first : 0;
	if (!sent_s)
		sent_s = span;  /* echo: replies go out over the receiving span */
	printf("{\"mode\": \"%s\", \"batch\": %u, \"size\": %u, \"rx\": %llu, \"tx\": %llu, "
	       "\"active_s\": %.3f, \"rx_pps\": %.0f, \"tx_s\": %.3f, \"tx_pps\": %.0f, "
	       "\"cpu_s\": %.3f}\n",
	       mode, batch, size, (unsigned long long)r.rx, (unsigned long long)r.tx, span,
	       span > 0 ? (r.rx - 1) / span : 0.0, sent_s,
	       sent_s > 0 ? r.tx / sent_s : 0.0, cpu);
	return 0;
}
