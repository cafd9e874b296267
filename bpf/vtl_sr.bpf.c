// SPDX-License-Identifier: GPL-2.0
/* VTL graft: Selective Repeat: out-of-order acceptance in the window, SACK bits, NACK per lost seq.
 * Its ingress KTF is tail-called by vtl_ingress, its egress KTF by vtl_egress
 * (bpf/vtl_canonical.bpf.c); the logic they share is in bpf/include/vtl.h. */
#include "vtl.h"

VTL_GRAFT_KTFS(sr, VTL_GRAFT_SR)

char LICENSE[] SEC("license") = "GPL";
