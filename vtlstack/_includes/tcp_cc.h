/* Congestion control for the TCP engine, behind one small interface (struct tcp_cc_ops):
 * the engine owns loss recovery (RFC 6582 NewReno fast recovery: inflation, partial ACKs),
 * the module owns cwnd growth and the reduction on loss and on RTO. A module is a const
 * table of C function pointers over a per-connection struct tcp_cc, so later work can put
 * another one (or a verified plugin) behind the same table per connection.
 * Units: cwnd and ssthresh in bytes, time in ns. */
#ifndef VTL_TCP_CC_H
#define VTL_TCP_CC_H

#include <math.h>
#include <stdint.h>

struct tcp_cc {
    uint32_t cwnd;
    uint32_t ssthresh;
    uint32_t mss;
    uint32_t acked_acc;   /* NewReno: bytes acked toward the next +1 MSS in avoidance */
    /* CUBIC (RFC 9438), windows in segments */
    double w_max;
    double k;             /* seconds */
    double w_est;
    double cwnd_epoch;
    double frac;          /* growth in bytes not yet applied to cwnd */
    uint64_t epoch_ns;    /* start of the congestion avoidance epoch; 0: none yet */
};

struct tcp_cc_ops {
    const char *name;
    void (*init)(struct tcp_cc *cc, uint32_t mss);
    /* New data acknowledged outside loss recovery; srtt_ns 0 when not yet measured. */
    void (*on_ack)(struct tcp_cc *cc, uint32_t acked, uint64_t srtt_ns, uint64_t now_ns);
    /* Entering fast recovery (third duplicate ACK): set ssthresh and cwnd. */
    void (*on_loss)(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns);
    /* Retransmission timeout. */
    void (*on_rto)(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns);
};

static inline uint32_t cc_max32(uint32_t a, uint32_t b) { return a > b ? a : b; }
static inline uint32_t cc_min32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* ---- NewReno (RFC 5681 growth and reduction; recovery is in the engine, RFC 6582) ---- */

static void reno_init(struct tcp_cc *cc, uint32_t mss)
{
    cc->mss = mss;
    /* RFC 5681 3.1: IW = min(4*SMSS, max(2*SMSS, 4380 bytes)) */
    cc->cwnd = cc_min32(4 * mss, cc_max32(2 * mss, 4380));
    /* RFC 5681 3.1: "The initial value of ssthresh SHOULD be set arbitrarily high" */
    cc->ssthresh = 0x7fffffff;
    cc->acked_acc = 0;
    cc->epoch_ns = 0;
    cc->w_max = 0;
    cc->frac = 0;
}

static void reno_on_ack(struct tcp_cc *cc, uint32_t acked, uint64_t srtt_ns, uint64_t now_ns)
{
    (void)srtt_ns;
    (void)now_ns;
    if (cc->cwnd < cc->ssthresh) {
        /* RFC 5681 3.1 (eq. 2): cwnd += min(N, SMSS) */
        cc->cwnd += cc_min32(acked, cc->mss);
        return;
    }
    /* RFC 5681 3.1: congestion avoidance by byte counting, +1 SMSS per cwnd acked */
    cc->acked_acc += acked;
    if (cc->acked_acc >= cc->cwnd) {
        cc->acked_acc -= cc->cwnd;
        cc->cwnd += cc->mss;
    }
}

static void reno_on_loss(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns)
{
    (void)now_ns;
    /* RFC 5681 3.1 (eq. 4): ssthresh = max(FlightSize / 2, 2*SMSS) */
    cc->ssthresh = cc_max32(flight / 2, 2 * cc->mss);
    cc->cwnd = cc->ssthresh;
    cc->acked_acc = 0;
}

static void reno_on_rto(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns)
{
    (void)now_ns;
    cc->ssthresh = cc_max32(flight / 2, 2 * cc->mss);
    /* RFC 5681 3.1: "cwnd MUST be set to no more than the loss window, LW, ... 1 SMSS" */
    cc->cwnd = cc->mss;
    cc->acked_acc = 0;
}

static const struct tcp_cc_ops tcp_cc_newreno = {
    "newreno", reno_init, reno_on_ack, reno_on_loss, reno_on_rto,
};

/* ---- CUBIC (RFC 9438) ---- */

#define CUBIC_C 0.4      /* RFC 9438 5.1: C = 0.4 */
#define CUBIC_BETA 0.7   /* RFC 9438 4.6: beta_cubic = 0.7 */

static void cubic_init(struct tcp_cc *cc, uint32_t mss)
{
    reno_init(cc, mss);
    cc->w_max = 0;
    cc->k = 0;
    cc->w_est = 0;
    cc->epoch_ns = 0;
}

/* RFC 9438 4.2 (eq. 1): W_cubic(t) = C * (t - K)^3 + W_max, in segments */
static inline double cubic_w(const struct tcp_cc *cc, double t)
{
    double d = t - cc->k;
    return CUBIC_C * d * d * d + cc->w_max;
}

static void cubic_on_ack(struct tcp_cc *cc, uint32_t acked, uint64_t srtt_ns, uint64_t now_ns)
{
    double cwnd = (double)cc->cwnd / cc->mss, t, target, alpha, inc;
    if (cc->cwnd < cc->ssthresh) {
        /* RFC 9438 4.10: below ssthresh CUBIC uses slow start */
        cc->cwnd += cc_min32(acked, cc->mss);
        return;
    }
    if (cc->epoch_ns == 0) {
        /* RFC 9438 4.2: a congestion avoidance epoch starts; eq. 2:
         * K = cubic_root((W_max - cwnd_epoch) / C), and K = 0 above W_max */
        cc->epoch_ns = now_ns;
        cc->cwnd_epoch = cwnd;
        if (cc->w_max < cwnd)
            cc->w_max = cwnd;
        cc->k = cbrt((cc->w_max - cwnd) / CUBIC_C);
        cc->w_est = cwnd;
        cc->frac = 0;
    }
    t = (double)(now_ns - cc->epoch_ns) * 1e-9;
    /* RFC 9438 4.3 (eq. 4): W_est += alpha_cubic * segments_acked / cwnd, with
     * alpha_cubic = 3 * (1 - beta) / (1 + beta), and 1 once W_est >= W_max */
    alpha = cc->w_est >= cc->w_max ? 1.0 : 3.0 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA);
    cc->w_est += alpha * ((double)acked / cc->mss) / cwnd;
    if (cubic_w(cc, t) < cc->w_est) {
        /* RFC 9438 4.3: "in the Reno-friendly region ... cwnd SHOULD be set to W_est" */
        if (cc->w_est * cc->mss > cc->cwnd)
            cc->cwnd = (uint32_t)(cc->w_est * cc->mss);
        return;
    }
    /* RFC 9438 4.4/4.5: target = W_cubic(t + RTT), clamped to [cwnd, 1.5 cwnd];
     * cwnd grows by (target - cwnd) / cwnd per acked segment */
    target = cubic_w(cc, t + (double)srtt_ns * 1e-9);
    if (target < cwnd)
        target = cwnd;
    if (target > 1.5 * cwnd)
        target = 1.5 * cwnd;
    inc = (target - cwnd) / cwnd * acked;   /* bytes */
    cc->frac += inc;
    if (cc->frac >= 1.0) {
        cc->cwnd += (uint32_t)cc->frac;
        cc->frac -= (uint32_t)cc->frac;
    }
}

static void cubic_reduce(struct tcp_cc *cc)
{
    double cwnd = (double)cc->cwnd / cc->mss;
    /* RFC 9438 4.7 fast convergence: a W_max below the last one is released faster */
    if (cwnd < cc->w_max)
        cc->w_max = cwnd * (1 + CUBIC_BETA) / 2;
    else
        cc->w_max = cwnd;
    /* RFC 9438 4.6: ssthresh = cwnd * beta_cubic, at least 2 segments */
    cc->ssthresh = cc_max32((uint32_t)(cwnd * CUBIC_BETA * cc->mss), 2 * cc->mss);
    cc->epoch_ns = 0;
}

static void cubic_on_loss(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns)
{
    (void)flight;
    (void)now_ns;
    cubic_reduce(cc);
    cc->cwnd = cc->ssthresh;
}

static void cubic_on_rto(struct tcp_cc *cc, uint32_t flight, uint64_t now_ns)
{
    (void)flight;
    (void)now_ns;
    /* RFC 9438 4.8: on timeout, ssthresh as on loss, then cwnd to one segment */
    cubic_reduce(cc);
    cc->cwnd = cc->mss;
}

static const struct tcp_cc_ops tcp_cc_cubic = {
    "cubic", cubic_init, cubic_on_ack, cubic_on_loss, cubic_on_rto,
};

#endif
