// SPDX-License-Identifier: GPL-2.0
/* VTL graft: Go-Back-N: in-order acceptance, cumulative ACKs, go back on 3 duplicate ACKs.
 * Its ingress KTF is tail-called by vtl_ingress, its egress KTF by vtl_egress
 * (bpf/vtl_canonical.bpf.c); the logic they share is in bpf/include/vtl.h. */
#include "vtl.h"

VTL_GRAFT_KTFS(gbn, VTL_GRAFT_GBN)

char LICENSE[] SEC("license") = "GPL";
