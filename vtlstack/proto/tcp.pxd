# TCP header (RFC 9293 3.1) and options (RFC 9293 MSS, RFC 7323 window scale and timestamps,
# RFC 2018 SACK): offsets and accessors over a pointer to the TCP header, a parsed repr of
# the options with parse/emit, and the header writer.
# tcp_check() is the one length/shape/checksum check; after it, the accessors cannot fail.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from vtlstack._includes.csum cimport csum_add, csum_fold, csum_pseudo4

cdef enum:
    TCP_MIN_HLEN = 20
    TCP_MAX_HLEN = 60
    TCP_MAX_OPTLEN = 40
    TCP_SPORT = 0
    TCP_DPORT = 2
    TCP_SEQ = 4
    TCP_ACK = 8
    TCP_OFF = 12
    TCP_FLAGS = 13
    TCP_WIN = 14
    TCP_CSUM = 16
    TCP_URP = 18

# Control bits (RFC 9293 3.1; the ECN bits are not used).
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PSH = 0x08
    TH_ACK = 0x10
    TH_URG = 0x20

# Option kinds and their lengths.
cdef enum:
    TCPOPT_EOL = 0
    TCPOPT_NOP = 1
    TCPOPT_MSS = 2
    TCPOPT_WSCALE = 3
    TCPOPT_SACK_PERM = 4
    TCPOPT_SACK = 5
    TCPOPT_TS = 8
    TCPOLEN_MSS = 4
    TCPOLEN_WSCALE = 3
    TCPOLEN_SACK_PERM = 2
    TCPOLEN_TS = 10
    TCP_MAX_SACK = 4        # 4 blocks fill 34 of the 40 option bytes
    TCP_MAX_WSCALE = 14     # RFC 7323 2.3

# Reasons tcp_check() gives (0 = fine).
cdef enum:
    TCP_OK = 0
    TCP_TRUNCATED = 1
    TCP_BAD_OFFSET = 2
    TCP_BAD_CHECKSUM = 3

# Which options a tcp_opts carries.
cdef enum:
    OPT_MSS = 0x01
    OPT_WSCALE = 0x02
    OPT_SACK_PERM = 0x04
    OPT_TS = 0x08
    OPT_SACK = 0x10


# The options of one segment, parsed (the "repr"): only fields whose bit is in `has` count.
ctypedef struct tcp_opts:
    uint8_t has
    uint8_t wscale
    uint8_t nsack
    uint16_t mss
    uint32_t tsval
    uint32_t tsecr
    uint32_t sack[TCP_MAX_SACK][2]   # [left, right) edges, host order


cdef inline uint16_t _rd16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t _rd32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void _wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline uint16_t tcp_sport(const uint8_t *t) noexcept nogil:
    return _rd16(t + TCP_SPORT)


cdef inline uint16_t tcp_dport(const uint8_t *t) noexcept nogil:
    return _rd16(t + TCP_DPORT)


cdef inline uint32_t tcp_seq(const uint8_t *t) noexcept nogil:
    return _rd32(t + TCP_SEQ)


cdef inline uint32_t tcp_ackno(const uint8_t *t) noexcept nogil:
    return _rd32(t + TCP_ACK)


cdef inline uint16_t tcp_hlen(const uint8_t *t) noexcept nogil:
    return (t[TCP_OFF] >> 4) * 4


cdef inline uint8_t tcp_flags(const uint8_t *t) noexcept nogil:
    return t[TCP_FLAGS] & 0x3F


cdef inline uint16_t tcp_win(const uint8_t *t) noexcept nogil:
    return _rd16(t + TCP_WIN)


cdef inline int tcp_check(const uint8_t *t, uint32_t tlen, uint32_t src,
                          uint32_t dst) noexcept nogil:
    """Validate a TCP segment of `tlen` bytes (header + payload, as the IPv4 total length
    says) between `src` and `dst` (network order)."""
    cdef uint16_t hlen
    if tlen < TCP_MIN_HLEN or tlen > 0xFFFF:
        return TCP_TRUNCATED
    hlen = tcp_hlen(t)
    # RFC 9293 3.1: "Data Offset: ... the number of 32-bit words in the TCP header"
    if hlen < TCP_MIN_HLEN or hlen > tlen:
        return TCP_BAD_OFFSET
    # RFC 9293 3.10.7: checksum over the pseudo-header, header and text must verify.
    if csum_fold(csum_add(csum_pseudo4(src, dst, 6, <uint16_t>tlen), t, tlen)) != 0:
        return TCP_BAD_CHECKSUM
    return TCP_OK


cdef inline int tcp_parse_opts(const uint8_t *t, tcp_opts *o) noexcept nogil:
    """Parse the options of a checked header into `o`. Returns 0, or -1 when the option list
    is malformed (a length below 2 or running past the header): such a segment is dropped.
    A known option with the wrong length is ignored, as an unknown one would be
    (RFC 9293 3.1: "MUST ignore without error any TCP option it does not implement")."""
    cdef uint32_t i = TCP_MIN_HLEN, end = tcp_hlen(t), n, k
    cdef uint8_t kind, olen
    memset(o, 0, sizeof(tcp_opts))
    while i < end:
        kind = t[i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return -1
        olen = t[i + 1]
        if olen < 2 or i + olen > end:
            return -1
        if kind == TCPOPT_MSS and olen == TCPOLEN_MSS:
            o.has |= OPT_MSS
            o.mss = _rd16(t + i + 2)
        elif kind == TCPOPT_WSCALE and olen == TCPOLEN_WSCALE:
            o.has |= OPT_WSCALE
            # RFC 7323 2.3: "If a Window Scale option is received with a shift.cnt value
            # larger than 14, the TCP SHOULD log the error but MUST use 14 instead"
            o.wscale = t[i + 2] if t[i + 2] <= TCP_MAX_WSCALE else TCP_MAX_WSCALE
        elif kind == TCPOPT_SACK_PERM and olen == TCPOLEN_SACK_PERM:
            o.has |= OPT_SACK_PERM
        elif kind == TCPOPT_TS and olen == TCPOLEN_TS:
            o.has |= OPT_TS
            o.tsval = _rd32(t + i + 2)
            o.tsecr = _rd32(t + i + 6)
        elif kind == TCPOPT_SACK and olen >= 10 and (olen - 2) % 8 == 0:
            o.has |= OPT_SACK
            n = (olen - 2) // 8
            if n > TCP_MAX_SACK:
                n = TCP_MAX_SACK
            for k in range(n):
                o.sack[k][0] = _rd32(t + i + 2 + 8 * k)
                o.sack[k][1] = _rd32(t + i + 6 + 8 * k)
            o.nsack = <uint8_t>n
        i += olen
    return 0


cdef inline uint8_t tcp_emit_opts(uint8_t *p, const tcp_opts *o) noexcept nogil:
    """Write the options of `o` at `p` (room for TCP_MAX_OPTLEN), NOP-padded to a multiple of
    4; returns their length. The layout is the one Linux uses, so captures compare."""
    cdef uint8_t n = 0, k, nsack
    if o.has & OPT_MSS:
        p[0] = TCPOPT_MSS
        p[1] = TCPOLEN_MSS
        _wr16(p + 2, o.mss)
        n = 4
    if o.has & OPT_SACK_PERM:
        p[n] = TCPOPT_SACK_PERM
        p[n + 1] = TCPOLEN_SACK_PERM
        n += 2
        if not (o.has & OPT_TS):
            p[n] = TCPOPT_NOP
            p[n + 1] = TCPOPT_NOP
            n += 2
    elif o.has & OPT_TS:
        p[n] = TCPOPT_NOP
        p[n + 1] = TCPOPT_NOP
        n += 2
    if o.has & OPT_TS:
        p[n] = TCPOPT_TS
        p[n + 1] = TCPOLEN_TS
        _wr32(p + n + 2, o.tsval)
        _wr32(p + n + 6, o.tsecr)
        n += 10
    if o.has & OPT_WSCALE:
        p[n] = TCPOPT_NOP
        p[n + 1] = TCPOPT_WSCALE
        p[n + 2] = TCPOLEN_WSCALE
        p[n + 3] = o.wscale
        n += 4
    if o.has & OPT_SACK and o.nsack:
        nsack = o.nsack
        while n + 4 + 8 * nsack > TCP_MAX_OPTLEN:
            nsack -= 1
        if nsack:
            p[n] = TCPOPT_NOP
            p[n + 1] = TCPOPT_NOP
            p[n + 2] = TCPOPT_SACK
            p[n + 3] = 2 + 8 * nsack
            n += 4
            for k in range(nsack):
                _wr32(p + n, o.sack[k][0])
                _wr32(p + n + 4, o.sack[k][1])
                n += 8
    return n


cdef inline void tcp_write(uint8_t *t, uint16_t sport, uint16_t dport, uint32_t seq,
                           uint32_t ack, uint8_t flags, uint16_t win, const uint8_t *opts,
                           uint8_t optlen) noexcept nogil:
    """Header and options (optlen a multiple of 4); the checksum is left at zero for
    tcp_set_csum once the payload is in place."""
    _wr16(t + TCP_SPORT, sport)
    _wr16(t + TCP_DPORT, dport)
    _wr32(t + TCP_SEQ, seq)
    _wr32(t + TCP_ACK, ack)
    t[TCP_OFF] = ((TCP_MIN_HLEN + optlen) // 4) << 4
    t[TCP_FLAGS] = flags
    _wr16(t + TCP_WIN, win)
    t[TCP_CSUM] = 0
    t[TCP_CSUM + 1] = 0
    t[TCP_URP] = 0
    t[TCP_URP + 1] = 0
    if optlen:
        memcpy(t + TCP_MIN_HLEN, opts, optlen)


cdef inline void tcp_set_csum(uint8_t *t, uint16_t tlen, uint32_t src,
                              uint32_t dst) noexcept nogil:
    """Checksum over pseudo-header + `tlen` bytes (header + payload in place)."""
    cdef uint16_t c
    t[TCP_CSUM] = 0
    t[TCP_CSUM + 1] = 0
    c = csum_fold(csum_add(csum_pseudo4(src, dst, 6, tlen), t, tlen))
    memcpy(t + TCP_CSUM, &c, 2)
