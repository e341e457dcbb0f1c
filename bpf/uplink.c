/* Entry programs on the node's uplink (tc, direct-action): traffic from outside the cluster to
 * NodePorts, externalIPs and LoadBalancer IPs, as kube-proxy serves it.
 *
 *   from_uplink (tc ingress)  reply of a flow we NATed      -> translated back (to the client)
 *                             established external flow    -> same translation again
 *                             new flow to an external frontend:
 *                               source range check (LB IPs) -> drop when outside
 *                               externalTrafficPolicy Local -> a local backend, client address kept
 *                               session affinity            -> the client's last backend, when
 *                                                              still a candidate
 *                               Cluster, local backend      -> DNAT only (the reply passes here)
 *                               Cluster, remote backend     -> DNAT + SNAT to the node address
 *   to_uplink   (tc egress)   a local backend's reply to an outside client -> source back to the
 *                             frontend; the fragments the stack cut from a packet from_uplink
 *                             handed it to fragment (fib.h) -> their source NAT
 *   xdp_uplink  (XDP)         the fast path before the stack: established SNATed flows translated
 *                             and sent back out (XDP_TX), sources outside a LoadBalancer's
 *                             ranges dropped; everything else passes to tc untouched, so results
 *                             are the same with XDP on or off (new flows, and so session affinity,
 *                             are tc's)
 * ClusterIPs are not served from outside: only frontends flagged NAT_FLG_EXTERNAL are.
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
#include "snat.h"
#include "fib.h"
#include "forward.h"
#include "counters.h"
#include "icmp_reject.h"
#include "icmp_error.h"
#include "frag_forward.h"
#include "trace.h"

/* Send p translated as t says (ct_target.h's nat_target_of(): NAT_FWD, destination to the backend
 * and with SNAT the source to the node's, so the reply comes back through us; NAT_REV, source back
 * to the frontend and after SNAT the destination back to the client): in place for the stack to
 * route, or SNATed past it by FIB. One call site per program: the verifier prunes the paths that
 * reach it alike, where each inlined copy would be walked again. */
static __always_inline int uplink_send(struct __sk_buff *skb, const struct packet *p, const struct nat_target *t)
{
	if (t->path != NAT_PATH_FIB)
		return nat_rewrite(skb, p, t->saddr, t->sport, t->daddr, t->dport) < 0 ?
			drop_skb(skb, DROP_REWRITE_FAILED) : TC_ACT_NEXT;
	return forward_by_fib(skb, p, t, 0);
}

/* The new-flow path is a program of its own, from_uplink_new_flow, reached by a tail call, and
 * its SNAT towards a backend elsewhere a third, from_uplink_snat: with layout 8's larger keys the
 * verifier's work for from_uplink as one program passed four times its budget (the SNAT port
 * search, walked once per candidate for every way there). from_uplink_new_flow runs from_uplink's
 * steps again from the packet (a few lookups, on a flow's first packet only) and goes on where the
 * first stopped; another CPU's flow made meanwhile is found as any would be. from_uplink_snat
 * takes the flow as from_uplink_new_flow left it in the per-CPU slots (ct_scratch, snat_handoff):
 * tail calls run on the same CPU, one after the other, the packet unchanged.
 * Pinned beside the maps: programs and their tail calls outlive the agent, and an unpinned
 * program array is emptied when its last file descriptor closes. The loader fills the slots. */
#define UPLINK_CALL_NEW_FLOW 0
#define UPLINK_CALL_SNAT 1
BPF_TABLE_PINNED("prog", int, int, uplink_calls, 2, PINNED(uplink_calls));

/* What from_uplink_snat needs beside the two values in ct_scratch. */
struct snat_handoff {
	struct ct_key old_rev_key;   /* with reopens: the reply tuple of the closed flow reopened */
	__u64 now;
	__u32 be_addr;               /* be */
	__u16 be_port;               /* be */
	__u8 reopens;
	__u8 affinity;               /* remember the client's backend (affinity on) */
	__u32 svc_id;
	__u32 pad;
};
/* Pinned, as ct_scratch: shared by every generation of these programs (the loader fills
 * uplink_calls one slot at a time). */
BPF_TABLE_PINNED("percpu_array", __u32, struct snat_handoff, snat_handoffs, 1, PINNED(snat_handoffs));

/* fwd_key: p's tuple; old_rev_key: the reply tuple of the closed flow p reopens there, or NULL;
 * old_rev: what ct_is_reopen_of() found at it. */
static __always_inline int new_external_flow(struct __sk_buff *skb, const struct packet *p,
					     const struct nat_fe_value *fe, const struct ct_key *fwd_key,
					     const struct ct_key *old_rev_key, struct ct_value *old_rev, __u64 now,
					     struct nat_target *t, int *send)
{
	if (!lb_source_allowed(fe, p->saddr)) {
		TRACE("service %d: %pI4 outside loadBalancerSourceRanges, dropped", fe->id, &p->saddr);
		return drop_skb(skb, DROP_SOURCE_RANGE);
	}
	struct nat_be_value *be = NULL, sticky;
	__u32 ordinal = 0;
	enum affinity_state affinity;

	switch (affinity_decide(fe, 1, lb_flow_hash(p), p->saddr, now, &sticky, &be, &ordinal, &affinity)) {
	case LB_NO_LOCAL_ENDPOINT:
		TRACE("service %d: %pI4: no local endpoint (externalTrafficPolicy Local), dropped", fe->id, &p->saddr);
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
	ct_new_pair(p, fwd_key, fe->id, be->addr, be->port, fwd, rev, now);
	fwd->flags = rev->flags = CT_FLAG_UPLINK;
	if (ordinal < fe->local) {
		/* Here: the client's address is kept, and to_uplink translates the reply. */
		ct_reply_key(p, be->addr, be->port, p->saddr, p->sport, &rev_key);
		if (ct_create_flow(p, fwd_key, &rev_key, fwd, rev, old_rev_key, old_rev) < 0)
			return drop_skb(skb, DROP_CT_CLASH);
		/* nat_target_of(fwd_key, fwd), from what is known here: read back from the per-CPU
		 * slot, the flags would be unknown to the verifier, which would walk every send path. */
		t->saddr = p->saddr;
		t->sport = p->sport;
		t->path = NAT_PATH_NEXT;
	} else {
		/* Elsewhere: SNAT, or its reply would go straight to the client, untranslated: from_uplink_snat. */
		__u32 zero = 0;
		struct config *cfg = config.lookup(&zero);
		if (!cfg || !cfg->node_addr)
			return drop_skb(skb, DROP_NO_NAT_ADDRESS);
		struct snat_handoff *h = snat_handoffs.lookup(&zero);
		if (!h)
			return drop_skb(skb, DROP_NO_NEW_FLOW_PROGRAM);
		fwd->flags = rev->flags = CT_FLAG_UPLINK | CT_FLAG_SNAT;
		rev->snat_addr = p->saddr;
		rev->snat_port = p->sport;
		__builtin_memset(h, 0, sizeof(*h));
		if (old_rev_key) {
			h->old_rev_key = *old_rev_key;
			h->reopens = 1;
		}
		h->now = now;
		h->be_addr = be->addr;
		h->be_port = be->port;
		h->affinity = affinity != AFFINITY_OFF;
		h->svc_id = fe->id;
		uplink_calls.call(skb, UPLINK_CALL_SNAT);
		return drop_skb(skb, DROP_NO_NEW_FLOW_PROGRAM);   /* only when the call failed */
	}
	t->daddr = be->addr;
	t->dport = be->port;
	if (affinity != AFFINITY_OFF)
		affinity_remember(fe->id, p->saddr, be, now);   /* the client's own address, before SNAT */

	TRACE("service %d: %pI4 -> backend %pI4", fe->id, &p->saddr, &be->addr);
	count_packet(skb, fe->id, 1);
	*send = 1;   /* as *t says: the entry program's one uplink_send() */
	return TC_ACT_NEXT;
}

/* from_uplink (new_flow_here 0) and from_uplink_new_flow (1): one body, the constant decides
 * which side of the tail call is compiled. */
static __always_inline int uplink_ingress(struct __sk_buff *skb, const int new_flow_here)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);

	/* The new-flow program meets only what from_uplink sent it (an unfragmented or first fragment,
	 * not an ICMP error): it leaves out those paths, and their stack and verifier work. */
	if (res == PARSE_FRAGMENT && p.frag == FRAG_LATER)
		return new_flow_here ? TC_ACT_NEXT : frag_later_tc(skb, &p, HOOK_FROM_UPLINK, 0);
	if (res != PARSE_OK)
		return TC_ACT_NEXT;
	if (p.frag == FRAG_FIRST && !new_flow_here)
		frag_remember(&p);   /* its later fragments' ports (frag.h) */
	if (p.proto == IPPROTO_ICMP && icmp_is_error(p.icmp_type))
		/* e.g. a router's frag-needed */
		return new_flow_here ? TC_ACT_NEXT : icmp_error_tc(skb, &p, HOOK_FROM_UPLINK, 0);
	if (!is_l4_with_ports(&p))
		return TC_ACT_NEXT;

	struct ct_key key;
	struct nat_target t;
	ct_key_of(&p, &key);
	struct ct_value *entry = ct.lookup(&key);
	if (entry && entry->type == CT_TYPE_NAT_REV) {
		/* A local pod's flow: to_workload translates it after routing (its frontend may be
		 * this node's own address, which the routing stack would call a martian source). */
		if (!(entry->flags & CT_FLAG_UPLINK) || ct_forget_if_stale(&p, &key, entry))
			return TC_ACT_NEXT;
		/* A backend elsewhere answering an outside client's flow we SNATed. */
		ct_touch_rev(&p, entry, clock_now());
		count_packet(skb, entry->svc_id, 0);
		nat_target_of(&key, entry, &t);
		goto send;
	}
	struct ct_key old_rev_key, *reopens = NULL;
	struct ct_value *old_rev = NULL;
	if (entry && entry->type == CT_TYPE_NAT_FWD) {
		if (!(entry->flags & CT_FLAG_UPLINK))
			return TC_ACT_NEXT;   /* a pod's flow: its tuple from outside is not ours to take */
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

	struct nat_fe_value *fe = lb_lookup_frontend(&p);
	if (!fe || !(fe->flags & NAT_FLG_EXTERNAL))
		return TC_ACT_NEXT;
	if (!new_flow_here) {
		uplink_calls.call(skb, UPLINK_CALL_NEW_FLOW);
		return drop_skb(skb, DROP_NO_NEW_FLOW_PROGRAM);   /* only when the call failed */
	}
	int send = 0;
	int verdict = new_external_flow(skb, &p, fe, &key, reopens, old_rev, clock_now(), &t, &send);
	if (!send)
		return verdict;
send:
	return uplink_send(skb, &p, &t);
}

int from_uplink(struct __sk_buff *skb)
{
	return uplink_ingress(skb, 0);
}

int from_uplink_new_flow(struct __sk_buff *skb)
{
	return uplink_ingress(skb, 1);
}

/* The SNAT of a new flow towards a backend elsewhere, as from_uplink_new_flow chose it: a source
 * port whose reply tuple is free (snat.h), both halves written, and the packet sent. */
int from_uplink_snat(struct __sk_buff *skb)
{
	struct packet p;
	__u32 zero = 0;

	if (parse_packet(skb, &p) != PARSE_OK || !is_l4_with_ports(&p))
		return TC_ACT_NEXT;   /* not what from_uplink_new_flow sends here */
	struct ct_pair_scratch *pair = ct_scratch.lookup(&zero);   /* as from_uplink_new_flow left it */
	struct snat_handoff *h = snat_handoffs.lookup(&zero);
	struct config *cfg = config.lookup(&zero);
	if (!pair || !h || !cfg || !cfg->node_addr)
		return drop_skb(skb, DROP_NO_NAT_ADDRESS);
	struct ct_key fwd_key, rev_key, old_rev_key = h->old_rev_key;
	ct_key_of(&p, &fwd_key);
	__u32 be_addr = h->be_addr, node_addr = cfg->node_addr, svc_id = h->svc_id;
	__u16 be_port = h->be_port;
	int adopted;
	__u16 port = snat_reserve(&p, &fwd_key, be_addr, be_port, node_addr, &pair->rev, &rev_key, &adopted);
	if (!port) {
		TRACE("service %d: no free SNAT port towards %pI4, dropped", svc_id, &be_addr);
		return drop_skb(skb, DROP_NO_SNAT_PORT);
	}
	pair->fwd.snat_addr = node_addr;
	pair->fwd.snat_port = port;
	if (ct_commit_flow(&fwd_key, &rev_key, &pair->fwd, h->reopens ? &old_rev_key : NULL) < 0)
		return drop_skb(skb, DROP_CT_CLASH);
	if (h->affinity) {
		struct nat_be_value be;
		__builtin_memset(&be, 0, sizeof(be));
		be.addr = be_addr;
		be.port = be_port;
		affinity_remember(svc_id, p.saddr, &be, h->now);   /* the client's own address, before SNAT */
	}
	TRACE("service %d: %pI4 -> backend %pI4", svc_id, &p.saddr, &be_addr);
	count_packet(skb, svc_id, 1);
	struct nat_target t = {
		.saddr = node_addr,
		.daddr = be_addr,
		.sport = port,
		.dport = be_port,
		.path = NAT_PATH_FIB,
	};
	return uplink_send(skb, &p, &t);
}

/* A fragment the stack cut from a packet from_uplink handed it (fib.h's forward_by_fib()): it leaves
 * with the source NAT the packet was handed up without. 0: no such fragment. */
static __always_inline int snat_handed_fragment(struct __sk_buff *skb, const struct packet *p, int *verdict)
{
	struct frag_snat_value *s = frag_snat_of(p);

	if (!s)
		return 0;
	*verdict = nat_rewrite_any(skb, p, s->saddr, s->sport, p->daddr, p->dport) < 0 ?
		drop_skb(skb, DROP_REWRITE_FAILED) : TC_ACT_NEXT;
	return 1;
}

int to_uplink(struct __sk_buff *skb)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);
	int verdict;

	if ((res == PARSE_OK || res == PARSE_FRAGMENT) && p.frag != FRAG_NONE && snat_handed_fragment(skb, &p, &verdict))
		return verdict;
	if (res == PARSE_FRAGMENT && p.frag == FRAG_LATER)
		return frag_later_tc(skb, &p, HOOK_TO_UPLINK, 0);
	if (res != PARSE_OK)
		return TC_ACT_NEXT;
	if (p.frag == FRAG_FIRST)
		frag_remember(&p);   /* its later fragments' ports (frag.h) */
	if (p.proto == IPPROTO_ICMP && icmp_is_error(p.icmp_type))
		return icmp_error_tc(skb, &p, HOOK_TO_UPLINK, 0);
	if (!is_l4_with_ports(&p))
		return TC_ACT_NEXT;

	struct ct_key key;
	ct_key_of(&p, &key);
	struct ct_value *rev = ct.lookup(&key);
	if (!rev || rev->type != CT_TYPE_NAT_REV || (rev->flags & (CT_FLAG_UPLINK | CT_FLAG_SNAT)) != CT_FLAG_UPLINK ||
	    ct_forget_if_stale(&p, &key, rev))
		return TC_ACT_NEXT;
	ct_touch_rev(&p, rev, clock_now());
	count_packet(skb, rev->svc_id, 0);
	struct nat_target t;
	nat_target_of(&key, rev, &t);
	return uplink_send(skb, &p, &t);
}

/* Translate an established SNATed flow in XDP and send it on. XDP_PASS (untouched) whenever
 * something is missing: tc does the same work the slow way. */
static __always_inline int xdp_forward(struct xdp_md *ctx, const struct packet *p, const struct ct_key *key,
				       struct ct_value *entry,
				       __u32 saddr, __u16 sport, __u32 daddr, __u16 dport, __u64 now)
{
	__u8 macs[12];
	__u32 ifindex;

	if (xdp_csum_partial(ctx, p) || p->ttl <= 1)
		return XDP_PASS;   /* tc knows the skb's checksum state; tc answers time exceeded */

	/* Only back out of the interface it came in on: the agent put XDP here because this interface
	 * delivers what XDP sends (ebpflb/datapath/attach.py); another may not, and would drop it. */
	if (fib_next_hop(ctx, saddr, daddr, p->proto, &ifindex, macs) < 0 || ifindex != ctx->ingress_ifindex)
		return XDP_PASS;
	if (xdp_rewrite(ctx, p, saddr, sport, daddr, dport) < 0)
		return XDP_PASS;
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + ETH_HLEN_;
	if ((void *)(iph + 1) > data_end)
		return drop_xdp(ctx, DROP_REWRITE_FAILED);   /* cannot happen: the headers were just rewritten */
	__builtin_memcpy(data, macs, sizeof(macs));
	ip_decrement_ttl(iph);   /* forwarded past the stack (forward.h) */
	if (entry->type == CT_TYPE_NAT_FWD)
		ct_touch_fwd(p, key, entry, now);   /* 0: xdp_uplink leaves a flow before its client's ACK to tc */
	else
		ct_touch_rev(p, entry, now);
	count_bytes(entry->svc_id, data_end - data, 0);
	return XDP_TX;
}

int xdp_uplink(struct xdp_md *ctx)
{
	struct packet p;

	if (parse_xdp(ctx, &p) != PARSE_OK || !is_l4_with_ports(&p) || p.frag != FRAG_NONE)
		return XDP_PASS;   /* fragments are tc's (frag.h) */

	struct ct_key key;
	ct_key_of(&p, &key);
	struct ct_value *entry = ct.lookup(&key);
	if (entry && (entry->flags & (CT_FLAG_UPLINK | CT_FLAG_SNAT)) == (CT_FLAG_UPLINK | CT_FLAG_SNAT)) {
		__u64 now = clock_now();
		/* A TCP flow before its client's ACK goes to tc, which may have to drop that ACK (ct_first_ack()). */
		if (entry->type == CT_TYPE_NAT_FWD && (p.proto != IPPROTO_TCP || (entry->tcp_seen & CT_TCP_ACK_FWD)) &&
		    !ct_is_reopen(&p, &key, entry) &&
		    (now <= entry->last_seen_ns || ct_reply_half_whole(&key, entry)))   /* else tc mends it */
			return xdp_forward(ctx, &p, &key, entry, entry->snat_addr, entry->snat_port ? entry->snat_port : p.sport,
					   entry->nat_addr, entry->nat_port, now);
		if (entry->type == CT_TYPE_NAT_REV && (p.tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != (TCP_FL_SYN | TCP_FL_ACK))
			return xdp_forward(ctx, &p, &key, entry, entry->nat_addr, entry->nat_port,
					   entry->snat_addr, entry->snat_port ? entry->snat_port : p.dport, now);
		return XDP_PASS;
	}
	if (entry)
		return XDP_PASS;

	struct nat_fe_value *fe = lb_lookup_frontend(&p);
	if (fe && (fe->flags & NAT_FLG_EXTERNAL) && !lb_source_allowed(fe, p.saddr))
		return drop_xdp(ctx, DROP_SOURCE_RANGE);   /* before the stack sees it */
	return XDP_PASS;
}
