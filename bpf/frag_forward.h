/* A later IPv4 fragment at a tc hook: the translation its datagram's flow gets here (frag.h). */
#pragma once
#include "frag.h"
#include "ct_target.h"
#include "csum.h"
#include "nat.h"
#include "fib.h"
#include "forward.h"
#include "trace.h"
#include "counters.h"

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
	if (t.path == NAT_PATH_FIB)
		return forward_by_fib(skb, p, &t, 1);
	if (t.path == NAT_PATH_BACK) {
		int verdict = forward_hop(skb, p, 0, 0);
		if (verdict != TC_ACT_NEXT)
			return verdict;
	}
	if (rewrite_addrs(skb, p, t.saddr, t.daddr) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	return t.path == NAT_PATH_BACK ? redirect_back(skb) : TC_ACT_NEXT;
unknown:
	if (!drop_unknown)
		return TC_ACT_NEXT;
	TRACE("%pI4 -> %pI4: a later fragment before its first, dropped", &p->saddr, &p->daddr);
	return drop_skb(skb, DROP_FRAGMENT_UNKNOWN);
}
