/* Map layout of the testbed's link impairment (bpf/impair.bpf.c).
 *
 * The one definition of this layout: the eBPF program includes it, and vtlstack.testbed
 * parses the declarations below with cffi (after dropping the preprocessor lines), so keep
 * them plain C: fixed-width __u32/__u64 fields, no macros inside declarations.
 * Probabilities are in parts per million.
 */
#ifndef VTL_IMPAIR_H
#define VTL_IMPAIR_H

enum impair_model {
	IMPAIR_RANDOM = 0, /* each frame dropped with probability loss_ppm */
	IMPAIR_BURSTY = 1, /* Gilbert-Elliott: all frames dropped in the bad state */
};

enum impair_limits {
	IMPAIR_MATCH_OFF_MAX = 252, /* a targeted drop looks at the headers only */
};

/* Key 0 of the impair_cfg array map; written from user space before traffic flows. */
struct impair_cfg {
	__u32 model;            /* enum impair_model */
	__u32 loss_ppm;         /* random: drop probability */
	__u32 good_to_bad_ppm;  /* bursty: per-frame probability of entering the bad state */
	__u32 bad_to_good_ppm;  /* bursty: per-frame probability of leaving it */
	__u32 redirect_ifindex; /* tc program: forward ingress frames to this ifindex (0: don't) */
	/* Targeted drop, for tests that need one given frame lost (a tail loss, say): the
	 * first match_drops frames whose 32-bit word at byte match_off (network order),
	 * masked with match_mask, equals match_value are dropped, whatever the model says. */
	__u32 match_off;
	__u32 match_mask;
	__u32 match_value;
	__u32 match_drops;
	__u32 pad;
};

/* Key 0 of the impair_stats array map; one instance per interface, i.e. per direction. */
struct impair_stats {
	__u64 passed;     /* frames the XDP program let through */
	__u64 dropped;    /* frames it dropped (targeted drops included) */
	__u64 targeted;   /* frames dropped because they matched (struct impair_cfg) */
	__u64 redirected; /* frames the tc program forwarded */
	__u32 bad;        /* bursty: 1 while in the bad state */
	__u32 pad;
};

#endif
