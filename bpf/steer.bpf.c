// SPDX-License-Identifier: GPL-2.0
/*
 * XDP steering: frames for (protocol, destination port) pairs the stack owns, or from
 * (protocol, source port) pairs it owns as such, go to the AF_XDP socket of the receiving
 * queue; everything else (ARP, ICMP, other ports, IPv6,
 * anything we cannot parse) goes to the kernel untouched. Map layout: steer.h.
 *
 * Written for libxdp: SEC("xdp"), BTF maps, and built with -g so libxdp can read the
 * BTF it needs to put the program behind its multiprog dispatcher.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_PORTS);
	__type(key, struct steer_key);
	__type(value, struct steer_val);
} owned_ports SEC(".maps");

/* Whole port ranges per IP protocol (indexed by protocol number): the local ports of
 * active opens, which must stay ours for as long as the connection may get a segment. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct steer_range);
} owned_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} steer_counters SEC(".maps");

/* Both TCP and UDP (and the VTL header) start with 16-bit source and destination ports. */
struct ports {
	__be16 src;
	__be16 dst;
};

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&steer_counters, &idx);

	if (c)
		*c += 1;  /* per-CPU slot: no atomic needed */
	return verdict;
}

static __always_inline int steer_l4(struct xdp_md *ctx, __u8 proto, void *l4, void *end)
{
	struct steer_key key = {};
	struct ports *p = l4;
	struct steer_range *range;
	__u32 proto_idx = proto;
	int ret;

	if (proto != STEER_PROTO_TCP && proto != STEER_PROTO_UDP && proto != STEER_PROTO_VTL)
		return count(STEER_PASSED, XDP_PASS);
	if ((void *)(p + 1) > end)
		return count(STEER_MALFORMED, XDP_PASS);
	key.port = bpf_ntohs(p->dst);
	key.proto = proto;
	if (!bpf_map_lookup_elem(&owned_ports, &key)) {
		range = bpf_map_lookup_elem(&owned_ranges, &proto_idx);
		if (!range || !range->lo || key.port < range->lo || key.port > range->hi) {
			key.port = bpf_ntohs(p->src);
			key.dir = STEER_DIR_SRC;
			if (!bpf_map_lookup_elem(&owned_ports, &key))
				return count(STEER_PASSED, XDP_PASS);
		}
	}
	/* XDP_PASS as the fallback: with no socket on this queue the kernel still gets it. */
	ret = bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
	if (ret == XDP_REDIRECT)
		return count(STEER_REDIRECTED, ret);
	return count(STEER_NO_SOCKET, ret);
}

SEC("xdp")
int vtl_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 ihl;

	if ((void *)(eth + 1) > end)
		return count(STEER_MALFORMED, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		/* Parsed for shape only: the stack is IPv4 for now, so IPv6 is the kernel's. */
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return count(STEER_MALFORMED, XDP_PASS);
		return count(STEER_PASSED, XDP_PASS);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STEER_PASSED, XDP_PASS);  /* ARP and the rest */

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return count(STEER_MALFORMED, XDP_PASS);
	ihl = ip->ihl * 4;
	if (ip->version != 4 || ihl < sizeof(*ip))
		return count(STEER_MALFORMED, XDP_PASS);
	/* Fragments are the kernel's: only the first carries ports, and we do not reassemble. */
	if (ip->frag_off & bpf_htons(0x3FFF))
		return count(STEER_PASSED, XDP_PASS);
	if ((void *)ip + ihl > end)
		return count(STEER_MALFORMED, XDP_PASS);
	return steer_l4(ctx, ip->protocol, (void *)ip + ihl, end);
}

char _license[] SEC("license") = "GPL";
