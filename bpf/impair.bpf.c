// SPDX-License-Identifier: GPL-2.0
/* Link impairment for the testbed's wire namespace.
 *
 * impair_xdp (XDP, native, on both wire interfaces): drops frames at random or in bursts.
 * It runs before AF_PACKET taps, so the delay forwarder never sees a lost frame.
 * impair_fwd (tc clsact ingress): forwards every frame to the other wire interface when
 * there is no delay forwarder, without the wire's own IP stack ever seeing it.
 * Each interface loads its own copy, so the maps and the burst state are per direction.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "impair.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct impair_cfg);
} impair_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct impair_stats);
} impair_stats SEC(".maps");

static __always_inline int chance(__u32 ppm)
{
	return bpf_get_prandom_u32() % 1000000 < ppm;
}

/* A frame the test asked to lose (struct impair_cfg, match_*). The count is checked,
 * then raised, not atomically: two CPUs could both drop one more than asked, which a
 * test sending one flow through one veth queue does not do. */
static __always_inline int targeted(struct impair_cfg *cfg, struct impair_stats *st,
				    void *data, void *data_end)
{
	__u32 off = cfg->match_off, word;

	if (st->targeted >= cfg->match_drops || off > IMPAIR_MATCH_OFF_MAX)
		return 0;
	if (data + off + sizeof(word) > data_end)
		return 0;
	__builtin_memcpy(&word, data + off, sizeof(word));
	if ((bpf_ntohl(word) & cfg->match_mask) != cfg->match_value)
		return 0;
	__sync_fetch_and_add(&st->targeted, 1);
	return 1;
}

/* frags: large MTUs (veth refuses native XDP above a page otherwise); only the Ethernet
 * header, always in the first buffer, is read. */
SEC("xdp.frags")
int impair_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = 0;
	struct impair_cfg *cfg = bpf_map_lookup_elem(&impair_cfg, &key);
	struct impair_stats *st = bpf_map_lookup_elem(&impair_stats, &key);
	int drop;

	if (!cfg || !st)
		return XDP_PASS;
	/* ARP is never dropped: a lost ARP costs a second-long stall that no real link of
	 * this loss rate shows, and it would make loss measurements depend on ARP timing. */
	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_ARP))
		drop = 0;
	else if (targeted(cfg, st, data, data_end))
		drop = 1;
	else if (cfg->model == IMPAIR_BURSTY) {
		if (st->bad ? chance(cfg->bad_to_good_ppm) : chance(cfg->good_to_bad_ppm))
			st->bad = !st->bad;
		drop = st->bad;
	} else
		drop = chance(cfg->loss_ppm);
	if (drop) {
		__sync_fetch_and_add(&st->dropped, 1);
		return XDP_DROP;
	}
	__sync_fetch_and_add(&st->passed, 1);
	return XDP_PASS;
}

SEC("tc")
int impair_fwd(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct impair_cfg *cfg = bpf_map_lookup_elem(&impair_cfg, &key);
	struct impair_stats *st = bpf_map_lookup_elem(&impair_stats, &key);

	if (!cfg || !st || !cfg->redirect_ifindex)
		return TC_ACT_OK;
	__sync_fetch_and_add(&st->redirected, 1);
	return bpf_redirect(cfg->redirect_ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
