/* Entry programs on the host side of a pod's veth (tc, direct-action).
 *
 *   from_workload (tc ingress: the pod sends)   established flow -> same translation again
 *                                               service VIP:port  -> pick backend (the client's
 *                                                                    own under session affinity),
 *                                                                    DNAT, conntrack
 *                                               hairpin           -> also SNAT, send straight back
 *                                                                    (one hop: TTL, time exceeded)
 *   to_workload   (tc egress: the pod receives) reply of a NATed flow -> source back to VIP:port
 *
 * DNAT happens on the client's node, so the reply's reverse NAT happens there too.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#include "structs.h"
#include "consts.h"
#include "maps.h"
#include "parse.h"
#include "nat.h"
#include "conntrack.h"
#include "lb.h"
#include "affinity.h"
#include "counters.h"
#include "icmp_reject.h"
#include "icmp_error.h"
#include "frag_forward.h"
#include "forward.h"
#include "trace.h"

/* Send p translated as t says (ct_target.h's nat_target_of(): NAT_FWD, destination to the backend;
 * NAT_REV, source back to the frontend; for hairpin the other address too): on in place for the
 * stack to route, or for hairpin straight back out of the pod's veth, since the routing stack
 * would call the pod's own address a martian. That bypasses the stack's forwarding, so it does
 * what the forwarding would (forward.h: TTL, time exceeded). One call site per program: each
 * inlined copy would be walked by the verifier again. */
static __always_inline int workload_send(struct __sk_buff *skb, const struct packet *p, const struct nat_target *t)
{
	if (t->path == NAT_PATH_BACK) {
		int verdict = forward_hop(skb, p, 0, 1);
		if (verdict != TC_ACT_NEXT)
			return verdict;
	}
	if (nat_rewrite(skb, p, t->saddr, t->sport, t->daddr, t->dport) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	return t->path == NAT_PATH_BACK ? redirect_back(skb) : TC_ACT_NEXT;
}

/* fwd_key: p's tuple; old_rev_key: the reply tuple of the closed flow p reopens there, or NULL;
 * old_rev: what ct_is_reopen_of() found at it. */
static __always_inline int new_service_flow(struct __sk_buff *skb, const struct packet *p,
					    const struct nat_fe_value *fe, const struct ct_key *fwd_key,
					    const struct ct_key *old_rev_key, struct ct_value *old_rev, __u64 now,
					    struct nat_target *t, int *send)
{
	struct nat_be_value *be = NULL, sticky;
	__u32 ordinal;
	enum affinity_state affinity;

	switch (affinity_decide(fe, 0, lb_flow_hash(p), p->saddr, now, &sticky, &be, &ordinal, &affinity)) {
	case LB_NO_LOCAL_ENDPOINT:
		return drop_skb(skb, DROP_NO_LOCAL_ENDPOINT);
	case LB_NO_ENDPOINTS:
		return answer_no_endpoints(skb, p);
	case LB_NO_BACKEND:
		return drop_skb(skb, DROP_NO_BACKEND);
	case LB_BACKEND:
		break;
	}
	if (!be)
		return drop_skb(skb, DROP_NO_BACKEND);

	struct ct_pair_scratch *pair = ct_scratch_pair();
	if (!pair)
		return drop_skb(skb, DROP_CT_CLASH);
	struct ct_value *fwd = &pair->fwd, *rev = &pair->rev;
	struct ct_key rev_key;
	__u32 reply_dst = p->saddr;

	ct_new_pair(p, fwd_key, fe->id, be->addr, be->port, fwd, rev, now);
	if (be->addr == p->saddr) {
		__u32 zero = 0;
		struct config *cfg = config.lookup(&zero);
		if (!cfg || !cfg->hairpin_addr)
			return drop_skb(skb, DROP_NO_NAT_ADDRESS);
		reply_dst = cfg->hairpin_addr;
		fwd->flags = rev->flags = CT_FLAG_SNAT;
		fwd->snat_addr = cfg->hairpin_addr;
		rev->snat_addr = p->saddr;
	}
	ct_reply_key(p, be->addr, be->port, reply_dst, p->sport, &rev_key);
	if (ct_create_flow(p, fwd_key, &rev_key, fwd, rev, old_rev_key, old_rev) < 0)
		return drop_skb(skb, DROP_CT_CLASH);
	if (affinity != AFFINITY_OFF)
		affinity_remember(fe->id, p->saddr, be, now);

	TRACE("service %d: %pI4 -> backend %pI4", fe->id, &p->saddr, &be->addr);
	count_packet(skb, fe->id, 1);
	nat_target_of(fwd_key, fwd, t);
	*send = 1;   /* as *t says: the entry program's one workload_send() */
	return TC_ACT_NEXT;
}

int from_workload(struct __sk_buff *skb)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);

	if (res == PARSE_NOT_IPV4 || res == PARSE_MALFORMED)
		return TC_ACT_NEXT;   /* not ours, or not parsed whole: never translated */
	if (res == PARSE_FRAGMENT && p.frag == FRAG_LATER && p.proto != IPPROTO_SCTP)
		/* never to a VIP untranslated: its first fragment's flow, or dropped */
		return frag_later_tc(skb, &p, HOOK_FROM_WORKLOAD, lb_is_cluster_ip(p.daddr));
	if (res != PARSE_OK)
		/* An SCTP fragment: its CRC spans the datagram, no translation could keep it. */
		return lb_is_cluster_ip(p.daddr) ? drop_skb(skb, DROP_FRAGMENT_TO_SERVICE) : TC_ACT_NEXT;
	if (p.frag == FRAG_FIRST)
		frag_remember(&p);   /* its later fragments' ports (frag.h) */
	if (p.proto == IPPROTO_ICMP && icmp_is_error(p.icmp_type))
		/* e.g. a client refusing a reply; one about no flow of ours is not for a ClusterIP */
		return icmp_error_tc(skb, &p, HOOK_FROM_WORKLOAD, lb_is_cluster_ip(p.daddr));
	if (!is_l4_with_ports(&p))
		/* A ClusterIP answers no ping and carries no other protocol. */
		return lb_is_cluster_ip(p.daddr) ? drop_skb(skb, DROP_NOT_L4_TO_SERVICE) : TC_ACT_NEXT;

	struct ct_key key;
	struct nat_target t;
	ct_key_of(&p, &key);
	struct ct_value *entry = ct.lookup(&key);
	if (entry && entry->type == CT_TYPE_NAT_REV) {
		if ((entry->flags & (CT_FLAG_SNAT | CT_FLAG_UPLINK)) != CT_FLAG_SNAT)
			return TC_ACT_NEXT;   /* a backend answering: reverse NAT is at the client's side */
		if (ct_forget_if_stale(&p, &key, entry))
			return TC_ACT_NEXT;
		/* The hairpin backend answering itself comes back in here. */
		ct_touch_rev(&p, entry, clock_now());
		count_packet(skb, entry->svc_id, 0);
		nat_target_of(&key, entry, &t);
		goto send;
	}
	struct ct_key old_rev_key, *reopens = NULL;
	struct ct_value *old_rev = NULL;
	if (entry && entry->type == CT_TYPE_NAT_FWD) {
		if (entry->flags & CT_FLAG_UPLINK)
			return TC_ACT_NEXT;   /* an outside client's flow: the uplink translates it, not a pod */
		if (!ct_is_reopen_of(&p, &key, entry, &old_rev)) {
			__u64 now = clock_now();
			/* Once a tick: is the flow's reply half still there, and still its own? */
			if (now <= entry->last_seen_ns || ct_check_reply_half(&key, entry, now) == 0) {
				if (ct_touch_fwd(&p, &key, entry, now) < 0)
					return drop_skb(skb, DROP_CT_CLASH);   /* its SNAT port being reclaimed */
				count_packet(skb, entry->svc_id, 0);
				nat_target_of(&key, entry, &t);
				goto send;
			}
		} else {
			old_rev_key = entry->twin;
			reopens = &old_rev_key;
		}
	}

	/* Conntrack first, so a flow outlives its service as with kube-proxy; then, for pod-to-pod
	 * traffic, a bit test instead of two more hash lookups. */
	if (!lb_maybe_frontend_addr(p.daddr))
		return TC_ACT_NEXT;
	struct nat_fe_value *fe = lb_lookup_frontend(&p);
	if (!fe)   /* a port of a service address that no service uses: refused, like kube-proxy's nftables */
		return lb_is_service_ip(p.daddr) ? answer_no_endpoints(skb, &p) : TC_ACT_NEXT;
	int send = 0;
	int verdict = new_service_flow(skb, &p, fe, &key, reopens, old_rev, clock_now(), &t, &send);
	if (!send)
		return verdict;
send:
	return workload_send(skb, &p, &t);
}

int to_workload(struct __sk_buff *skb)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);

	if (res == PARSE_FRAGMENT && p.frag == FRAG_LATER)
		return frag_later_tc(skb, &p, HOOK_TO_WORKLOAD, 0);   /* e.g. a backend's large answer */
	if (res != PARSE_OK)
		return TC_ACT_NEXT;
	if (p.frag == FRAG_FIRST)
		frag_remember(&p);   /* its later fragments' ports (frag.h) */
	if (p.proto == IPPROTO_ICMP && icmp_is_error(p.icmp_type))
		return icmp_error_tc(skb, &p, HOOK_TO_WORKLOAD, 0);   /* e.g. a backend's port unreachable */
	if (!is_l4_with_ports(&p))
		return TC_ACT_NEXT;

	struct ct_key key;
	ct_key_of(&p, &key);
	struct ct_value *rev = ct.lookup(&key);
	if (!rev || rev->type != CT_TYPE_NAT_REV ||
	    /* SNATed to the node's address: from_uplink restores address and port */
	    (rev->flags & (CT_FLAG_UPLINK | CT_FLAG_SNAT)) == (CT_FLAG_UPLINK | CT_FLAG_SNAT) ||
	    ct_forget_if_stale(&p, &key, rev))
		return TC_ACT_NEXT;
	ct_touch_rev(&p, rev, clock_now());
	count_packet(skb, rev->svc_id, 0);
	struct nat_target t;
	nat_target_of(&key, rev, &t);
	return workload_send(skb, &p, &t);
}
