// SPDX-License-Identifier: GPL-2.0
/* VTL root KTFs and the canonical graft.
 *
 * vtl_ingress (XDP) runs first on every frame of the interface: frames that are not VTL
 * pass to the kernel untouched. A VTL packet is validated once here (length, version,
 * checksum, type, session, graft) and every failure is dropped and counted by reason;
 * negotiation and CLOSE go up to the broker's raw socket (XDP_PASS); DATA/ACK/NACK are
 * handed to the session's graft by tail call (vtl_xdp_grafts[graft id]), so a graft is
 * deployed by putting its KTF into that array and removed by taking it out.
 * vtl_egress (tc clsact egress) does the same for outgoing DATA with vtl_tc_grafts.
 * The canonical graft (best effort with integrity) is graft 0, built from this object.
 */
#include "vtl.h"

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, VTL_MAX_GRAFTS);
	__type(key, __u32);
	__type(value, __u32);
} vtl_xdp_grafts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, VTL_MAX_GRAFTS);
	__type(key, __u32);
	__type(value, __u32);
} vtl_tc_grafts SEC(".maps");

static __always_inline int drop(__u32 reason)
{
	vtl_count(reason);
	return XDP_DROP;
}

SEC("xdp")
int vtl_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct vtl_scratch *sc;
	struct vtl_hdr *h;
	struct vtl_skey key = {};
	struct vtl_session *s;
	__u32 tot, hdrs, vlen, padded, off, n, i;
	__s64 sum = 0;

	struct udphdr *udp = (void *)(ip + 1);
	__u32 vtl_off = VTL_OFF_IP, zero = 0;
	struct vtl_cfg *cfg;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol == IPPROTO_UDP) {
		/* The UDP encapsulation: ours only on VTL_UDP_PORT, and only without IP
		 * options (the UDP header would be elsewhere: then it is not ours). */
		if (ip->ihl != 5 || (void *)(udp + 1) > data_end ||
		    udp->dest != bpf_htons(VTL_UDP_PORT))
			return XDP_PASS;
		vtl_off = VTL_OFF_UDP;
	} else if (ip->protocol != VTL_IPPROTO) {
		return XDP_PASS;
	}
	/* A router running VTL itself forwards other hosts' VTL untouched. */
	cfg = bpf_map_lookup_elem(&vtl_config, &zero);
	if (cfg && cfg->local_ip && ip->daddr != cfg->local_ip) {
		vtl_count(VTL_C_TRANSIT);
		return XDP_PASS;
	}
	/* IP options or fragments: VTL never sends them, so they are malformed here. */
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return drop(VTL_C_DROP_TRUNCATED);
	tot = bpf_ntohs(ip->tot_len);
	hdrs = vtl_off - ETH_HLEN;   /* IP (+ UDP) header bytes, 20 or 28 */
	if (tot < hdrs + VTL_HDR_LEN || (void *)ip + tot > data_end)
		return drop(VTL_C_DROP_TRUNCATED);
	vlen = tot - hdrs;
	if (vlen > VTL_HDR_LEN + VTL_MAX_PAYLOAD)
		return drop(VTL_C_DROP_TRUNCATED);
	if (vtl_off == VTL_OFF_UDP && bpf_ntohs(udp->len) != sizeof(*udp) + vlen)
		return drop(VTL_C_DROP_TRUNCATED);
	sc = vtl_scratch_get();
	if (!sc)
		return XDP_DROP;
	off = vtl_off;
	if (bpf_xdp_load_bytes(ctx, off, sc->buf, vlen))
		return drop(VTL_C_DROP_TRUNCATED);
	h = (struct vtl_hdr *)sc->buf;
	if (h->version != VTL_VERSION)
		return drop(VTL_C_DROP_VERSION);
	if (bpf_ntohs(h->len) != vlen - VTL_HDR_LEN)
		return drop(VTL_C_DROP_TRUNCATED);

	/* RFC 1071 sum over header and payload, zero-padded to a 4-byte multiple for
	 * bpf_csum_diff, in chunks of at most 512 bytes (its limit). */
	padded = (vlen + 3) & ~3U;
	i = vlen & 0x7ff;   /* vlen <= 1424 already; the mask shows the verifier a bound */
	if (i + 3 <= sizeof(sc->buf)) {
		sc->buf[i] = 0;
		sc->buf[i + 1] = 0;
		sc->buf[i + 2] = 0;
	}
	for (i = 0; i < 3; i++) {
		off = i * 512;
		if (off >= padded)
			break;
		n = padded - off;
		if (n > 512)
			n = 512;
		sum = bpf_csum_diff(0, 0, (__be32 *)(sc->buf + off), n & 0x3fc, sum);
	}
	if (vtl_fold(sum))
		return drop(VTL_C_DROP_CSUM);

	switch (h->type) {
	case VTL_NEGO:
	case VTL_NEGO_ACK:
	case VTL_NEGO_NACK:
	case VTL_CLOSE:
		vtl_count(VTL_C_RX_CTRL);
		return XDP_PASS;   /* the broker's raw socket takes it from here */
	case VTL_DATA:
	case VTL_ACK:
	case VTL_NACK:
		break;
	default:
		return drop(VTL_C_DROP_TYPE);
	}
	key.session = bpf_ntohl(h->session);
	key.role = h->type == VTL_DATA ? VTL_ROLE_RECEIVER : VTL_ROLE_SENDER;
	s = bpf_map_lookup_elem(&vtl_sessions, &key);
	if (!s)
		return drop(VTL_C_DROP_SESSION);
	if (s->graft != h->graft)
		return drop(VTL_C_DROP_GRAFT);
	sc->m.type = h->type;
	sc->m.graft = h->graft;
	sc->m.flags = h->flags;
	sc->m.session = key.session;
	sc->m.seq = bpf_ntohl(h->seq);
	sc->m.ack = bpf_ntohl(h->ack);
	sc->m.bits = bpf_ntohl(h->bits);
	sc->m.len = vlen - VTL_HDR_LEN;
	sc->m.vtl_off = vtl_off;
	bpf_tail_call(ctx, &vtl_xdp_grafts, h->graft);
	/* Only reached when the graft's KTF is not deployed. */
	return drop(VTL_C_DROP_GRAFT);
}

SEC("tc")
int vtl_egress(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct udphdr udp;
	struct vtl_hdr h;
	__u32 off = VTL_OFF_IP;

	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl != 5)
		return TC_ACT_OK;
	if (ip.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, VTL_OFF_IP, &udp, sizeof(udp)) ||
		    udp.dest != bpf_htons(VTL_UDP_PORT))
			return TC_ACT_OK;
		off = VTL_OFF_UDP;
	} else if (ip.protocol != VTL_IPPROTO) {
		return TC_ACT_OK;
	}
	if (bpf_skb_load_bytes(skb, off, &h, sizeof(h)) || h.type != VTL_DATA)
		return TC_ACT_OK;
	skb->cb[0] = off;   /* for the graft's egress KTF */
	bpf_tail_call(skb, &vtl_tc_grafts, h.graft);
	return TC_ACT_OK;   /* graft not deployed here: not ours to police */
}

/* tc ingress: send the ACK/NACK frames the receiver KTF noted in vtl_bounces
 * (VTL_REPLY_BOUNCE) back out of this interface. Only what the KTFs noted counts, so this
 * never reflects a packet they did not make; everything else goes on untouched. */
SEC("tc")
int vtl_bounce(struct __sk_buff *skb)
{
	struct vtl_bounce_key bk;
	struct iphdr ip;
	struct udphdr udp;
	__u32 off = VTL_OFF_IP, *pending;

	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl != 5)
		return TC_ACT_OK;
	if (ip.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, VTL_OFF_IP, &udp, sizeof(udp)) ||
		    udp.source != bpf_htons(VTL_UDP_PORT))
			return TC_ACT_OK;
		off = VTL_OFF_UDP;
	} else if (ip.protocol != VTL_IPPROTO) {
		return TC_ACT_OK;
	}
	if (bpf_skb_load_bytes(skb, off, &bk.h, sizeof(bk.h)) ||
	    (bk.h.type != VTL_ACK && bk.h.type != VTL_NACK))
		return TC_ACT_OK;
	bk.daddr = ip.daddr;
	pending = bpf_map_lookup_elem(&vtl_bounces, &bk);
	if (!pending)
		return TC_ACT_OK;
	/* Not atomic as a whole (clang 14's eBPF has no fetching add): at worst a duplicate
	 * of this reply passes to the kernel, which drops it, or its slot waits for the LRU. */
	if (*pending <= 1)
		bpf_map_delete_elem(&vtl_bounces, &bk);
	else
		__sync_fetch_and_add(pending, -1);
	return bpf_redirect(skb->ifindex, 0);
}

VTL_GRAFT_KTFS(canonical, VTL_GRAFT_CANONICAL)

char LICENSE[] SEC("license") = "GPL";
