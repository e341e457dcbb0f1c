/* A later IPv4 fragment at a tc hook: the translation its datagram's flow gets here (frag.h). */
#pragma once
#include "frag.h"
#include "ct_target.h"
#include "csum.h"
#include "nat.h"
#include "fib.h"
#include "trace.h"
#include "counters.h"

/* The addresses and the IP checksum: a later fragment carries no L4 header. By the helpers: rare
 * enough not to matter, and no packet pointers to keep valid across the inlined paths. */
static __always_inline int rewrite_addrs(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u32 daddr)
{
	__u32 addrs[2] = { saddr, daddr };

	if (bpf_l3_csum_replace(skb, ETH_HLEN_ + offsetof(struct iphdr, check), 0, nat_addr_diff(p, saddr, daddr), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN_ + offsetof(struct iphdr, saddr), addrs, sizeof(addrs), 0);
}

/* p: PARSE_FRAGMENT with frag FRAG_LATER. drop_unknown: what one whose flow is not known here
 * becomes (dropped when it goes to a service address, else passed untouched). */
static __always_inline int frag_later_tc(struct __sk_buff *skb, struct packet *p, enum nat_hook hook, int drop_unknown)
{
	struct ct_key key;
	struct ct_value *e;
	struct nat_target t;

	if (frag_ports(p) < 0)
		goto unknown;
	ct_key_of(p, &key);
	e = ct.lookup(&key);
	if (!e || !nat_entry_applies(hook, e))
		goto unknown;
	nat_target_of(&key, e, &t);
	count_packet(skb, e->svc_id, 0);
	if (rewrite_addrs(skb, p, t.saddr, t.daddr) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	if (t.path == NAT_PATH_BACK)
		return redirect_back(skb);
	if (t.path == NAT_PATH_FIB)
		return redirect_by_fib(skb, t.saddr, t.daddr, p->proto);
	return TC_ACT_NEXT;
unknown:
	if (!drop_unknown)
		return TC_ACT_NEXT;
	TRACE("%pI4 -> %pI4: a later fragment before its first, dropped", &p->saddr, &p->daddr);
	return drop_skb(skb, DROP_FRAGMENT_UNKNOWN);
}
