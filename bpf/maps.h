/* Map definitions. All are pinned under PIN_DIR (a -D string the loader passes) so they outlive
 * the agent and are shared by every program of the node; bcc reuses a pin that already exists. */
#pragma once
#include "structs.h"

#define PINNED(name) PIN_DIR "/" #name

/* Sizes the loader may choose (DatapathOptions); structs.h has the defaults. */
#ifndef CT_MAP_MAX
#define CT_MAP_MAX CT_MAX
#endif
#ifndef NAT_FE_MAP_MAX
#define NAT_FE_MAP_MAX NAT_FE_MAX
#endif
#ifndef NAT_BE_MAP_MAX
#define NAT_BE_MAP_MAX NAT_BE_MAX
#endif

BPF_TABLE_PINNED("hash", struct nat_fe_key, struct nat_fe_value, nat_fe, NAT_FE_MAP_MAX,
		 PINNED(nat_fe), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct nat_be_key, struct nat_be_value, nat_be, NAT_BE_MAP_MAX,
		 PINNED(nat_be), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct svc_ip_key, struct svc_ip_value, svc_ips, SVC_IP_MAX,
		 PINNED(svc_ips), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, ct, CT_MAP_MAX, PINNED(ct));
BPF_TABLE_PINNED("percpu_array", __u32, struct svc_counters, svc_counters, SVC_COUNTERS_MAX,
		 PINNED(svc_counters));
BPF_TABLE_PINNED("percpu_array", __u32, struct drop_counters, drops, DROPS_MAX, PINNED(drops));
BPF_TABLE_PINNED("array", __u32, struct config, config, 1, PINNED(config));
BPF_TABLE_PINNED("lpm_trie", struct src_range_key, __u32, src_ranges, SRC_RANGES_MAX,
		 PINNED(src_ranges), BPF_F_NO_PREALLOC);
/* Session affinity (structs.h). affinity_be is as large as nat_be: it holds a subset of it. */
BPF_TABLE_PINNED("array", __u32, struct affinity_svc, affinity_svc, SVC_COUNTERS_MAX, PINNED(affinity_svc));
BPF_TABLE_PINNED("hash", struct affinity_be_key, __u32, affinity_be, NAT_BE_MAP_MAX, PINNED(affinity_be),
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct affinity_key, struct affinity_value, affinity, AFFINITY_MAX, PINNED(affinity));
/* An array: its lookups are inlined, a few instructions, where a hash lookup is a call. */
BPF_TABLE_PINNED("array", __u32, __u64, svc_addr_bits, SVC_ADDR_WORDS, PINNED(svc_addr_bits));
/* Host sockets pointed at a backend (bpf/sock.c); least recently used forgotten first. */
BPF_TABLE_PINNED("lru_hash", struct sock_rev_key, struct sock_rev_value, sock_rev, SOCK_REV_MAX, PINNED(sock_rev));
BPF_TABLE_PINNED("hash", struct sock_gone_key, __u32, sock_gone, SOCK_GONE_MAX, PINNED(sock_gone),
		 BPF_F_NO_PREALLOC);
/* The ICMP errors the programs send, rate limited node-wide (bpf/icmp_reject.h). */
BPF_TABLE_PINNED("array", __u32, struct icmp_bucket, icmp_bucket, 1, PINNED(icmp_bucket));
