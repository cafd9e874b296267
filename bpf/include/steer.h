/* SPDX-License-Identifier: MIT */
/*
 * Map layout of the XDP steering program (bpf/steer.bpf.c): the one definition shared by
 * the eBPF side, the Python loader (vtlstack/xdp.py reads this file through cffi after
 * dropping the preprocessor lines) and the C reference program (bench/xsk_ref.c).
 *
 * Keep it plain C: integer typedefs and enums only, no macros that carry meaning, so that
 * cffi can parse it with the '#' lines removed.
 */
#ifndef VTL_STEER_H
#define VTL_STEER_H

#include <linux/types.h>

enum steer_limits {
	STEER_MAX_QUEUES = 64,   /* xsks_map entries: one AF_XDP socket per RX queue */
	STEER_MAX_PORTS = 1024,  /* owned_ports entries */
};

/* owned_ports key. The port is in HOST byte order (the program converts), so user space
 * never has to remember an htons. A key matches the destination port, or with dir
 * STEER_DIR_SRC the source port (a transparent proxy's upstream connections: the server
 * answers to the client's address and port, only its own port says the segment is ours). */
struct steer_key {
	__u16 port;
	__u8 proto;   /* IPPROTO_TCP, IPPROTO_UDP or STEER_PROTO_VTL */
	__u8 dir;     /* STEER_DIR_DST or STEER_DIR_SRC */
};

enum steer_dir {
	STEER_DIR_DST = 0,
	STEER_DIR_SRC = 1,
};

/* owned_ports value: non-zero means "redirect to the AF_XDP socket of the RX queue". */
struct steer_val {
	__u32 flags;
};

/* owned_ranges value, indexed by IP protocol: dst ports lo..hi (host order) are owned.
 * lo == 0 means no range. */
struct steer_range {
	__u16 lo;
	__u16 hi;
};

enum steer_proto {
	STEER_PROTO_TCP = 6,
	STEER_PROTO_UDP = 17,
	STEER_PROTO_VTL = 253,  /* RFC 3692 experimental protocol number, used by VTL grafts */
};

/* Index into the per-CPU steer_counters array (one __u64 per entry per CPU). */
enum steer_counter {
	STEER_REDIRECTED = 0,  /* owned, and bpf_redirect_map found a socket */
	STEER_PASSED = 1,      /* well-formed but not ours: ARP, ICMP, other ports, IPv6 */
	STEER_MALFORMED = 2,   /* truncated or inconsistent headers: left to the kernel */
	STEER_NO_SOCKET = 3,   /* owned, but no AF_XDP socket bound on this queue: passed */
	STEER_NCOUNTERS = 4,
};

#endif /* VTL_STEER_H */
