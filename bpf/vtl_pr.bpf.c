// SPDX-License-Identifier: GPL-2.0
/* VTL graft: Partial Reliability: like Selective Repeat, but holes within the loss budget are given up.
 * Its ingress KTF is tail-called by vtl_ingress, its egress KTF by vtl_egress
 * (bpf/vtl_canonical.bpf.c); the logic they share is in bpf/include/vtl.h. */
#include "vtl.h"

VTL_GRAFT_KTFS(pr, VTL_GRAFT_PR)

char LICENSE[] SEC("license") = "GPL";
