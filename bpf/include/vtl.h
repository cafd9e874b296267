/* SPDX-License-Identifier: MIT */
/*
 * The Virtual Transport Layer: wire format, map layouts and the shared KTF code.
 *
 * The one definition of the VTL header. The KTFs (bpf/vtl_*.bpf.c) include this file;
 * vtlstack.vtl.wire parses the declarations outside the `#ifdef __bpf__` block with cffi
 * (preprocessor lines and that block dropped) and derives its pack/unpack format from the
 * struct, so keep those declarations plain C: fixed-width types, enums with literal values,
 * no macros inside declarations.
 *
 * A VTL packet is carried directly over IPv4 protocol 253 (RFC 3692 experimentation; the
 * paper used 0xfd) or, for paths that drop unknown protocols, in UDP between ports
 * VTL_UDP_PORT. All header fields are in network byte order. The checksum is the
 * Internet checksum (RFC 1071) over header (csum field zero) and payload.
 */
#ifndef VTL_VTL_H
#define VTL_VTL_H

#include <linux/types.h>
#include <linux/bpf.h>   /* struct bpf_spin_lock */

enum vtl_consts {
	VTL_IPPROTO = 253,
	VTL_VERSION = 1,
	VTL_HDR_LEN = 24,
	VTL_MAX_PAYLOAD = 1400,   /* fits a 1500-byte MTU with IPv4, and UDP if ever needed */
	VTL_DATA_ROOM = 1536,     /* room for a packet in scratch/ring records (csum chunks) */
	VTL_MAX_WINDOW = 1024,    /* sequence state is a ring bitmap of this many bits */
	VTL_MAP_WORDS = 16,       /* ... in 64-bit words (VTL_MAX_WINDOW / 64, a power of 2) */
	VTL_MAX_SESSIONS = 1024,
	VTL_MAX_GRAFTS = 8,
	VTL_REORDER = 3,          /* a hole is lost once 3 later packets arrived (dupthresh) */
	VTL_RENACK = 127,         /* ... and NACKed again 127 packets further if still open:
				   * beyond a round trip of packets in flight, so the first
				   * retransmission has had time to arrive */
	VTL_PR_BLOCK = 64,        /* partial reliability counts losses per 64-packet block */
	VTL_UDP_PORT = 7254,      /* the UDP encapsulation: VTL in UDP to and from this port */
	VTL_OFF_IP = 34,          /* VTL header offset in a frame: Ethernet + IPv4 */
	VTL_OFF_UDP = 42,         /* ... + UDP */
};

enum vtl_type {
	VTL_DATA = 1,
	VTL_ACK = 2,       /* ack = next expected seq; seq = the DATA seq it answers;
			    * bits = distinct DATA packets the receiver has had or given up
			    * (the sender's packets in flight: snd_nxt - bits) */
	VTL_NACK = 3,      /* ack = next expected seq; resend seq and, if bits is not 0,
			    * seq+bits too (a receiver names at most two holes at once) */
	VTL_NEGO = 4,      /* payload: JSON offer (grafts, services) */
	VTL_NEGO_ACK = 5,  /* payload: JSON with the graft chosen */
	VTL_NEGO_NACK = 6, /* payload: JSON with the reason */
	VTL_CLOSE = 7,     /* seq = packets sent, ack = bytes sent; flags VTL_F_REPLY: answer */
};

enum vtl_flags {
	VTL_F_REPLY = 1,   /* CLOSE: the receiver's answer */
	VTL_F_RETX = 2,    /* DATA: a retransmission (for counters only) */
	VTL_F_SWITCH = 4,  /* NEGO/NEGO_ACK: change the graft of a running session */
};

/* Graft ids: the index of the graft's KTFs in the tail-call program arrays. */
enum vtl_graft_id {
	VTL_GRAFT_CANONICAL = 0,
	VTL_GRAFT_GBN = 1,
	VTL_GRAFT_SR = 2,
	VTL_GRAFT_PR = 3,
};

struct vtl_hdr {
	__u8 version;
	__u8 type;     /* enum vtl_type */
	__u8 graft;    /* enum vtl_graft_id */
	__u8 flags;    /* enum vtl_flags */
	__be32 session;
	__be32 seq;
	__be32 ack;
	__be32 bits;
	__be16 len;    /* payload bytes after this header */
	__be16 csum;
};

enum vtl_role {
	VTL_ROLE_SENDER = 0,
	VTL_ROLE_RECEIVER = 1,
};

/* vtl_sessions key (host byte order). */
struct vtl_skey {
	__u32 session;
	__u32 role;   /* enum vtl_role */
};

/* vtl_sessions value. The control plane writes graft/window/budget when a session opens;
 * the KTFs own everything below `lock`. Sequence numbers count packets, not bytes.
 * `window` is the receive window: a sender never has a seq at or beyond snd_una + window
 * out (its egress KTF refuses it). How many packets are really in flight is the sender's
 * pacing, within that window: snd_nxt - delivered (what arrived beyond a hole is no longer
 * in the network, so a hole does not stall a Selective Repeat sender). */
struct vtl_session {
	struct bpf_spin_lock lock;
	__u32 graft;
	__u32 window;      /* receive window, packets, <= VTL_MAX_WINDOW */
	__u32 budget_ppm;  /* partial reliability: losses allowed per window, in ppm */
	__u32 snd_una;     /* sender: lowest unacknowledged seq */
	__u32 snd_nxt;     /* sender: highest seq sent + 1 */
	__u32 dupacks;     /* sender, Go-Back-N: duplicate ACKs in a row */
	__u32 rcv_nxt;     /* receiver: every seq below is delivered or given up */
	__u32 block;       /* receiver, PR: window-sized block the loss count refers to */
	__u32 block_lost;  /* receiver, PR: holes given up in that block */
	__u32 prev_lost;   /* receiver, PR: and in the block before it */
	__u32 delivered;   /* receiver: distinct DATA packets had or given up; sender: the
			    * largest such count an ACK reported */
	/* Receiver: ring bitmap, bit (seq % VTL_MAX_WINDOW) set = seq received or given up,
	 * for rcv_nxt <= seq < rcv_nxt + window; the bits below rcv_nxt are clear. */
	__u64 map[16];     /* VTL_MAP_WORDS */
	__u64 skipped;     /* receiver, PR: packets given up within the budget */
	__u64 last_ns;     /* last packet seen (idle sessions are reaped by the broker) */
};

/* Record in the vtl_rx ring: a DATA payload the receiver KTF accepted. */
struct vtl_rx_rec {
	__u32 session;
	__u32 seq;
	__u32 len;
	__u32 flags;
	__u8 data[1536];   /* VTL_DATA_ROOM */
};

enum vtl_event_kind {
	VTL_EV_ACKED = 1,  /* seq = snd_una, bits = delivered (see struct vtl_session) */
	VTL_EV_RETX = 2,   /* resend seq and, if bits is not 0, seq+bits */
	VTL_EV_GOBACK = 3, /* Go-Back-N: resend everything from seq */
};

/* Record in the vtl_ev ring: what the sender KTF asks its broker to do. */
struct vtl_event {
	__u32 kind;        /* enum vtl_event_kind */
	__u32 session;
	__u32 seq;
	__u32 bits;
	__u32 answers;     /* ACKED: the DATA seq the ACK answers (an RTT sample) */
};

/* Index of the per-CPU vtl_counters array. Drops are counted once, by reason. */
enum vtl_counter {
	VTL_C_RX_DATA = 0,       /* DATA accepted and delivered */
	VTL_C_RX_ACK = 1,
	VTL_C_RX_NACK = 2,
	VTL_C_RX_CTRL = 3,       /* NEGO*, CLOSE passed to the broker */
	VTL_C_TX_ACK = 4,        /* ACKs the receiver KTF sent (XDP_TX) */
	VTL_C_TX_NACK = 5,
	VTL_C_TX_DATA = 6,       /* DATA seen by the egress KTF */
	VTL_C_RETX_REQ = 7,      /* retransmission requests raised for the broker */
	VTL_C_PR_SKIPPED = 8,    /* losses accepted within the partial-reliability budget */
	VTL_C_DROP_TRUNCATED = 9,
	VTL_C_DROP_VERSION = 10,
	VTL_C_DROP_CSUM = 11,
	VTL_C_DROP_TYPE = 12,
	VTL_C_DROP_SESSION = 13,
	VTL_C_DROP_GRAFT = 14,   /* graft id unknown, not loaded, or not the session's */
	VTL_C_DROP_REPLAY = 15,  /* seq already delivered */
	VTL_C_DROP_WINDOW = 16,  /* seq beyond the receive window */
	VTL_C_DROP_ORDER = 17,   /* Go-Back-N: not the next expected seq */
	VTL_C_DROP_RINGFULL = 18,
	VTL_C_TX_WINDOW_FULL = 19, /* egress: DATA beyond the send window, not sent */
	VTL_C_TRANSIT = 20,      /* VTL for another host (we route it): passed untouched */
	VTL_C_MAX = 21,
};

/* Key 0 of the vtl_config array: what the control plane tells the root KTFs. */
struct vtl_cfg {
	__be32 local_ip;   /* this interface's IPv4 address; VTL to others is routed, not
			    * ours (0: take every VTL packet) */
	__u32 reply;       /* enum vtl_reply */
};

/* How a receiver KTF sends the ACK/NACK it made of a DATA frame. */
enum vtl_reply {
	/* XDP_TX: fastest, but a veth hands XDP_TX frames only to a peer that runs XDP
	 * itself, so a routed hop without XDP drops them. */
	VTL_REPLY_TX = 0,
	/* XDP_PASS with the reply noted in vtl_bounces; vtl_bounce (tc ingress) sends a
	 * frame it finds noted there out of the same interface through the normal transmit
	 * path, which every peer receives. Still made entirely in the kernel. (Not a mark in
	 * the XDP metadata: some kernels refuse bpf_xdp_adjust_meta to XDP programs.) */
	VTL_REPLY_BOUNCE = 1,
	VTL_BOUNCE_SLOTS = 4096,   /* replies between XDP and tc ingress at once */
};

#ifdef __bpf__
/* ---- Shared KTF code (eBPF only) ------------------------------------------------- */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

_Static_assert(sizeof(struct vtl_hdr) == VTL_HDR_LEN, "VTL header is 24 bytes");
_Static_assert(sizeof(((struct vtl_rx_rec *)0)->data) == VTL_DATA_ROOM, "data room");
_Static_assert(sizeof(((struct vtl_session *)0)->map) * 8 == VTL_MAX_WINDOW, "map width");
_Static_assert((VTL_MAP_WORDS & (VTL_MAP_WORDS - 1)) == 0, "map words: a power of 2");

/* Every object declares the same maps; the launcher loads vtl_canonical first and makes
 * every graft object reuse its maps (bpf_map__reuse_fd), so there is one set per interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VTL_MAX_SESSIONS);
	__type(key, struct vtl_skey);
	__type(value, struct vtl_session);
} vtl_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VTL_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} vtl_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} vtl_rx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} vtl_ev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtl_cfg);
} vtl_config SEC(".maps");

/* vtl_bounces key: a reply a receiver KTF made and passed up, whole header (checksum
 * included) and destination; the value counts such replies not yet sent. Only the KTFs
 * write this map, so vtl_bounce never reflects a frame from the wire that they did not
 * make. */
struct vtl_bounce_key {
	__be32 daddr;
	struct vtl_hdr h;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, VTL_BOUNCE_SLOTS);
	__type(key, struct vtl_bounce_key);
	__type(value, __u32);
} vtl_bounces SEC(".maps");

/* What the root ingress KTF parsed, for the graft it tail-calls (same CPU, same packet). */
struct vtl_meta {
	__u32 type, graft, flags, session, seq, ack, bits, len;
	__u32 vtl_off;   /* offset of the VTL header in the frame */
};

struct vtl_scratch {
	struct vtl_meta m;
	/* 2048: the verifier bounds a csum chunk at off + 1020 (mask 0x3fc), beyond
	 * the 1424 bytes a packet really uses. */
	__u8 buf[2048];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vtl_scratch);
} vtl_scratch SEC(".maps");

static __always_inline void vtl_count_n(__u32 idx, __u32 n)
{
	__u64 *c = bpf_map_lookup_elem(&vtl_counters, &idx);

	if (c)
		*c += n;   /* per-CPU slot: no atomic needed */
}

static __always_inline void vtl_count(__u32 idx)
{
	vtl_count_n(idx, 1);
}

static __always_inline __u16 vtl_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* Population count, in the branch-free SWAR way (eBPF has no instruction for it). */
static __always_inline __u32 vtl_popcount(__u64 v)
{
	v = v - ((v >> 1) & 0x5555555555555555ULL);
	v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
	v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (__u32)((v * 0x0101010101010101ULL) >> 56);
}

/* Trailing one bits of x (0..64), without a loop. */
static __always_inline __u32 vtl_trailing_ones(__u64 x)
{
	__u64 z = ~x;

	return vtl_popcount((z & -z) - 1);   /* z == 0 gives all ones: 64 */
}

/* n low bits set, n = 0..64, without a branch (n >> 6 is 1 only for 64). */
static __always_inline __u64 vtl_low_bits(__u32 n)
{
	return ((1ULL << (n & 63)) - 1) | -(__u64)(n >> 6);
}

/* The receiver's ring bitmap: the word holding seq, and seq's bit in it. */
static __always_inline __u64 *vtl_word(struct vtl_session *s, __u32 seq)
{
	return &s->map[(seq >> 6) & (VTL_MAP_WORDS - 1)];
}

static __always_inline int vtl_bit(struct vtl_session *s, __u32 seq)
{
	return (*vtl_word(s, seq) >> (seq & 63)) & 1;
}

/* Receiver: move rcv_nxt over the run of received seqs it starts, clearing their bits,
 * a word at a time (at most VTL_MAP_WORDS + 1 rounds; one branch each, to keep the
 * verifier's paths few). */
static __always_inline void vtl_slide(struct vtl_session *s)
{
	__u32 i, b, t;
	__u64 *w;

	for (i = 0; i <= VTL_MAP_WORDS; i++) {
		w = vtl_word(s, s->rcv_nxt);
		b = s->rcv_nxt & 63;
		t = vtl_trailing_ones(*w >> b);   /* <= 64 - b: the top b bits are zero */
		*w &= ~(vtl_low_bits(t) << b);
		s->rcv_nxt += t;
		if (b + t < 64)
			break;   /* stopped at a hole inside this word */
	}
}

static __always_inline struct vtl_scratch *vtl_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&vtl_scratch, &zero);
}

/* Turn the received DATA frame into an ACK/NACK for its sender and send it back (XDP_TX,
 * or the bounce through tc; see enum vtl_reply): the reply is generated in the kernel,
 * with no trip through user space. */
static __always_inline int vtl_reply(struct xdp_md *ctx, struct vtl_meta *m, __u8 type,
				     __u32 seq, __u32 ack, __u32 bits)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int want = (int)(m->vtl_off + VTL_HDR_LEN);
	int trim = (int)(data_end - data) - want;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	struct vtl_hdr *h;
	__u8 mac[ETH_ALEN];
	__u32 addr, zero = 0, one = 1, *pending;
	struct vtl_bounce_key bk;
	__u16 port;
	struct vtl_cfg *cfg;

	if (trim > 0 && bpf_xdp_adjust_tail(ctx, -trim))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	if (m->vtl_off == VTL_OFF_UDP) {
		h = (void *)(udp + 1);
		if ((void *)(h + 1) > data_end)
			return XDP_DROP;
		port = udp->source;
		udp->source = udp->dest;
		udp->dest = port;
		udp->len = bpf_htons(sizeof(*udp) + VTL_HDR_LEN);
		udp->check = 0;   /* optional over IPv4 (RFC 768); the VTL checksum covers us */
	} else {
		h = (void *)(ip + 1);
		if ((void *)(h + 1) > data_end)
			return XDP_DROP;
	}
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->ttl = 64;
	ip->tot_len = bpf_htons(m->vtl_off - sizeof(*eth) + VTL_HDR_LEN);
	ip->check = 0;
	ip->check = vtl_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
	h->type = type;
	h->flags = 0;
	h->seq = bpf_htonl(seq);
	h->ack = bpf_htonl(ack);
	h->bits = bpf_htonl(bits);
	h->len = 0;
	h->csum = 0;
	h->csum = vtl_fold(bpf_csum_diff(0, 0, (__be32 *)h, VTL_HDR_LEN, 0));
	vtl_count(type == VTL_NACK ? VTL_C_TX_NACK : VTL_C_TX_ACK);
	cfg = bpf_map_lookup_elem(&vtl_config, &zero);
	if (!cfg || cfg->reply != VTL_REPLY_BOUNCE)
		return XDP_TX;
	bk.daddr = ip->daddr;
	__builtin_memcpy(&bk.h, h, sizeof(bk.h));
	pending = bpf_map_lookup_elem(&vtl_bounces, &bk);
	if (pending) {
		__sync_fetch_and_add(pending, 1);   /* the same reply twice (a duplicate) */
		return XDP_PASS;
	}
	if (bpf_map_update_elem(&vtl_bounces, &bk, &one, BPF_NOEXIST)) {
		pending = bpf_map_lookup_elem(&vtl_bounces, &bk);   /* another CPU was first */
		if (!pending)
			return XDP_DROP;
		__sync_fetch_and_add(pending, 1);
	}
	return XDP_PASS;
}

/* Partial reliability: may the hole at seq be given up? Yes while the VTL_PR_BLOCK-packet
 * block it belongs to has lost fewer than budget packets. */
static __always_inline int vtl_pr_give_up(struct vtl_session *s, __u32 seq, __u32 budget)
{
	__u32 blk = seq / VTL_PR_BLOCK, *lost;

	/* Holes are looked at out of order (a second look lags by VTL_RENACK), so the
	 * counts of the current block and the one before it are both kept. */
	if (s->block == 0xffffffff || (__s32)(blk - s->block) > 0) {
		s->prev_lost = blk == s->block + 1 ? s->block_lost : 0;
		s->block_lost = 0;
		s->block = blk;
	}
	if (blk == s->block)
		lost = &s->block_lost;
	else if (blk == s->block - 1)
		lost = &s->prev_lost;
	else
		return 0;   /* too old to account for: ask for it */
	if (*lost >= budget)
		return 0;
	*lost += 1;
	s->skipped++;
	return 1;
}

/* Receiver side of a graft: sequence checks, delivery, loss detection, ACK/NACK. */
static __always_inline int vtl_rx_data(struct xdp_md *ctx, struct vtl_meta *m,
				       struct vtl_session *s, __u32 graft)
{
	struct vtl_rx_rec *rec;
	__u32 len = m->len, seq = m->seq, ack, delivered, window, budget, nskip = 0;
	__u32 p = 0, q = 0, hole_p = 0, hole_q = 0, nack_seq = 0, nack_also = 0;
	__s32 d;
	int verdict = 0;   /* 0 deliver, else the drop counter */

	rec = bpf_ringbuf_reserve(&vtl_rx, sizeof(*rec), 0);
	if (!rec) {
		/* No room: drop before the state changes, so the sender's retransmission
		 * (reliable grafts) still finds the seq missing. */
		vtl_count(VTL_C_DROP_RINGFULL);
		return XDP_DROP;
	}
	/* DATA carries at least one byte (an empty stream sends only CLOSE). */
	if (len == 0 || len > VTL_MAX_PAYLOAD ||
	    bpf_xdp_load_bytes(ctx, m->vtl_off + VTL_HDR_LEN, rec->data, len)) {
		bpf_ringbuf_discard(rec, 0);
		vtl_count(VTL_C_DROP_TRUNCATED);
		return XDP_DROP;
	}
	rec->session = m->session;
	rec->seq = seq;
	rec->len = len;
	rec->flags = m->flags;

	bpf_spin_lock(&s->lock);
	window = s->window;
	if (window > VTL_MAX_WINDOW || window == 0)
		window = VTL_MAX_WINDOW;
	d = (__s32)(seq - s->rcv_nxt);
	if (graft == VTL_GRAFT_CANONICAL) {
		/* Best effort: no window, only replays (seq already passed) are refused. */
		if (d < 0)
			verdict = VTL_C_DROP_REPLAY;
		else
			s->rcv_nxt = seq + 1;
		bpf_spin_unlock(&s->lock);
		goto deliver;
	}
	if (d < 0)
		verdict = VTL_C_DROP_REPLAY;
	else if (d >= (__s32)window)
		verdict = VTL_C_DROP_WINDOW;
	else if (graft == VTL_GRAFT_GBN && d != 0)
		verdict = VTL_C_DROP_ORDER;
	else if (vtl_bit(s, seq))
		verdict = VTL_C_DROP_REPLAY;
	if (!verdict) {
		*vtl_word(s, seq) |= 1ULL << (seq & 63);
		s->delivered++;
		/* Loss detection, by position: a hole VTL_REORDER packets below this one is
		 * lost (first NACK); a hole still open VTL_RENACK packets further down lost
		 * its NACK or its retransmission (second NACK). Each hole is looked at these
		 * two times only, so nothing has to remember which holes were NACKed. */
		if (graft != VTL_GRAFT_GBN && d >= VTL_REORDER) {
			p = (__u32)d - VTL_REORDER;
			hole_p = !vtl_bit(s, s->rcv_nxt + p);
			if (p >= VTL_RENACK) {
				q = p - VTL_RENACK;
				hole_q = !vtl_bit(s, s->rcv_nxt + q);
			}
		}
		if (graft == VTL_GRAFT_PR && (hole_p || hole_q)) {
			/* Give up holes while the block's losses stay within the budget; ask
			 * for the others. */
			budget = (__u32)(((__u64)VTL_PR_BLOCK * s->budget_ppm) / 1000000);
			if (hole_q && vtl_pr_give_up(s, s->rcv_nxt + q, budget)) {
				*vtl_word(s, s->rcv_nxt + q) |= 1ULL << ((s->rcv_nxt + q) & 63);
				hole_q = 0;
				nskip++;
			}
			if (hole_p && vtl_pr_give_up(s, s->rcv_nxt + p, budget)) {
				*vtl_word(s, s->rcv_nxt + p) |= 1ULL << ((s->rcv_nxt + p) & 63);
				hole_p = 0;
				nskip++;
			}
		}
		/* The NACK names absolute seqs: the lower hole, and the other as an offset. */
		if (hole_q) {
			nack_seq = s->rcv_nxt + q;
			nack_also = hole_p ? VTL_RENACK : 0;
		} else if (hole_p) {
			nack_seq = s->rcv_nxt + p;
		}
	}
	s->delivered += nskip;
	/* Slide over everything received or given up. */
	vtl_slide(s);
	ack = s->rcv_nxt;
	delivered = s->delivered;
	bpf_spin_unlock(&s->lock);

deliver:
	if (nskip)
		vtl_count_n(VTL_C_PR_SKIPPED, nskip);
	if (verdict) {
		bpf_ringbuf_discard(rec, 0);
		vtl_count(verdict);
	} else {
		bpf_ringbuf_submit(rec, 0);
		vtl_count(VTL_C_RX_DATA);
	}
	if (graft == VTL_GRAFT_CANONICAL)
		return XDP_DROP;   /* consumed: delivered through the ring, no feedback */
	if (hole_p || hole_q)
		return vtl_reply(ctx, m, VTL_NACK, nack_seq, ack, nack_also);
	return vtl_reply(ctx, m, VTL_ACK, seq, ack, delivered);
}

static __always_inline void vtl_event(__u32 kind, __u32 session, __u32 seq, __u32 bits,
				      __u32 answers)
{
	struct vtl_event *ev = bpf_ringbuf_reserve(&vtl_ev, sizeof(*ev), 0);

	if (!ev) {
		vtl_count(VTL_C_DROP_RINGFULL);
		return;
	}
	ev->kind = kind;
	ev->session = session;
	ev->seq = seq;
	ev->bits = bits;
	ev->answers = answers;
	bpf_ringbuf_submit(ev, 0);
}

/* Sender side of a graft: ACK/NACK processing, loss detection, retransmission requests,
 * and how many packets the receiver has (for the broker's count of packets in flight). */
static __always_inline int vtl_tx_feedback(struct vtl_meta *m, struct vtl_session *s,
					   __u32 graft)
{
	__u32 ack = m->ack, una, retx = 0, goback = 0, news = 0, delivered;

	vtl_count(m->type == VTL_NACK ? VTL_C_RX_NACK : VTL_C_RX_ACK);
	bpf_spin_lock(&s->lock);
	una = s->snd_una;
	if ((__s32)(ack - una) > 0 && (__s32)(ack - s->snd_nxt) <= 0) {
		s->snd_una = ack;
		s->dupacks = 0;
		news = 1;
	} else if (ack == una && m->type == VTL_ACK && una != s->snd_nxt &&
		   (__s32)(m->seq - ack) > 0) {
		/* Go-Back-N: the third duplicate ACK means the seq at una was lost. Only an
		 * ACK that answers a packet above the hole says so: one that answers a packet
		 * the receiver already had (go-back's own duplicates) does not, or every
		 * go-back would set off the next. */
		if (++s->dupacks == VTL_REORDER && graft == VTL_GRAFT_GBN)
			goback = 1;
	}
	/* The count only grows (ACKs may arrive out of order, or not at all). */
	if (m->type == VTL_ACK && (__s32)(m->bits - s->delivered) > 0 &&
	    (__s32)(m->bits - s->snd_nxt) <= 0) {
		s->delivered = m->bits;
		news = 1;
	}
	una = s->snd_una;
	delivered = s->delivered;
	if (m->type == VTL_NACK && (__s32)(ack - una) >= 0)
		retx = 1;
	bpf_spin_unlock(&s->lock);

	if (news)
		vtl_event(VTL_EV_ACKED, m->session, una, delivered, m->seq);
	if (goback) {
		vtl_count(VTL_C_RETX_REQ);
		vtl_event(VTL_EV_GOBACK, m->session, una, 0, 0);
	}
	if (retx) {
		vtl_count(VTL_C_RETX_REQ);
		vtl_event(VTL_EV_RETX, m->session, m->seq, m->bits, 0);
	}
	return XDP_DROP;   /* consumed: the broker learns through vtl_ev */
}

/* The ingress KTF of a graft, tail-called by vtl_ingress with the packet validated. */
static __always_inline int vtl_graft_ingress(struct xdp_md *ctx, __u32 graft)
{
	struct vtl_scratch *sc = vtl_scratch_get();
	struct vtl_session *s;
	struct vtl_skey key = {};

	if (!sc)
		return XDP_DROP;
	key.session = sc->m.session;
	key.role = sc->m.type == VTL_DATA ? VTL_ROLE_RECEIVER : VTL_ROLE_SENDER;
	s = bpf_map_lookup_elem(&vtl_sessions, &key);
	if (!s) {
		vtl_count(VTL_C_DROP_SESSION);
		return XDP_DROP;
	}
	s->last_ns = bpf_ktime_get_ns();
	if (sc->m.type == VTL_DATA)
		return vtl_rx_data(ctx, &sc->m, s, graft);
	return vtl_tx_feedback(&sc->m, s, graft);
}

/* The egress KTF of a graft: the send window is enforced here, in the kernel, and the
 * in-flight state (snd_nxt) recorded. tail-called by vtl_egress for DATA of a session. */
static __always_inline int vtl_graft_egress(struct __sk_buff *skb, __u32 graft)
{
	struct vtl_skey key = {};
	struct vtl_session *s;
	struct vtl_hdr h;
	__u32 seq, window;
	int shot = 0;

	/* vtl_egress left the header's offset in cb[0] (IP or UDP encapsulation). */
	if (bpf_skb_load_bytes(skb, skb->cb[0] == VTL_OFF_UDP ? VTL_OFF_UDP : VTL_OFF_IP,
			       &h, sizeof(h)))
		return TC_ACT_OK;
	key.session = bpf_ntohl(h.session);
	key.role = VTL_ROLE_SENDER;
	s = bpf_map_lookup_elem(&vtl_sessions, &key);
	if (!s)
		return TC_ACT_OK;
	seq = bpf_ntohl(h.seq);
	bpf_spin_lock(&s->lock);
	window = s->window;
	if (graft != VTL_GRAFT_CANONICAL && (__s32)(seq - s->snd_una) >= (__s32)window)
		shot = 1;
	else if ((__s32)(seq - s->snd_nxt) >= 0)
		s->snd_nxt = seq + 1;
	bpf_spin_unlock(&s->lock);
	if (shot) {
		vtl_count(VTL_C_TX_WINDOW_FULL);
		return TC_ACT_SHOT;
	}
	vtl_count(VTL_C_TX_DATA);
	return TC_ACT_OK;
}

#define VTL_GRAFT_KTFS(name, id)                                                 \
	SEC("xdp") int vtl_##name##_in(struct xdp_md *ctx)                       \
	{                                                                        \
		return vtl_graft_ingress(ctx, id);                               \
	}                                                                        \
	SEC("tc") int vtl_##name##_out(struct __sk_buff *skb)                    \
	{                                                                        \
		return vtl_graft_egress(skb, id);                                \
	}

#endif /* __bpf__ */
#endif /* VTL_VTL_H */
