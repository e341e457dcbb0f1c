/* Source NAT towards a backend on another node: the node's address, and a source port no other
 * live flow to that backend uses (the reply's conntrack key must be unique). */
#pragma once
#include "conntrack.h"
#include "lb.h"

#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE (65536 - SNAT_PORT_MIN)
#define SNAT_TRIES 8

/* The flow's i-th candidate port (be): the client's own first (most often free), then ports from
 * the flow's hash. Not random: a flow always tries the same ports in the same order, so one that
 * lost its forward half finds its reply half, and its port, again. */
static __always_inline __u16 snat_candidate(const struct packet *p, __u32 hash, __u32 i)
{
	if (i == 0 && p->sport)   /* 0 is no port, and snat_reserve()'s "none" */
		return p->sport;
	__u32 stride = (hash >> 16) | 1;   /* odd: the steps do not repeat within the range */
	return bpf_htons(SNAT_PORT_MIN + (hash + i * stride) % SNAT_PORT_RANGE);
}

/* Every candidate is another live flow's. A SYN may take the port of the candidate flow that is
 * half-open (the backend answered or not, but no ACK from its client: CT_TCP_ACK_FWD), the oldest of
 * them, and only one older than SNAT_RECLAIM_MIN_AGE_NS: a SYN flood from spoofed sources holds
 * every port with flows that never complete (a backend's SYN-ACK alone does not establish one), and
 * a legitimate client's SYN would otherwise wait for them to expire (tcp_syn_sent). The oldest: a
 * port lives about range / flood rate before it is reclaimed, ~0.3 s at 100k SYNs/s, ample for
 * a real handshake's ACK to come back. The minimum age keeps a handshake in flight for at least
 * that long whatever the rate (a flood recycling the whole range faster lets no handshake through
 * anyway). An established flow's port is never taken. The pair goes by ct_forget(): claimed
 * first, so exactly one CPU takes it, and checked still half-open after the claim (the client's
 * first ACK sets its bit before it checks for a claim, ct_first_ack(): one of them sees the
 * other, and that ACK is dropped rather than sent with a port now another flow's). */
#define SNAT_RECLAIM_MIN_AGE_NS 50000000ULL   /* 50 ms */
static __always_inline __u16 snat_reclaim(const struct packet *p, const struct ct_key *fwd_key, __u32 hash,
					  struct ct_value *rev, struct ct_key *rev_key)
{
	if (p->proto != IPPROTO_TCP || (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != TCP_FL_SYN ||
	    rev->created_ns < SNAT_RECLAIM_MIN_AGE_NS)
		return 0;
	__u64 oldest = rev->created_ns - SNAT_RECLAIM_MIN_AGE_NS;
	__u16 port = 0;
	for (__u32 i = 0; i < SNAT_TRIES; i++) {
		rev_key->dst_port = snat_candidate(p, hash, i);
		struct ct_value *held = ct.lookup(rev_key);
		if (held && held->type == CT_TYPE_NAT_REV && held->last_seen_ns != CT_CLAIMED &&
		    !(held->tcp_seen & CT_TCP_ACK_FWD) && held->created_ns <= oldest) {
			oldest = held->created_ns;
			port = rev_key->dst_port;
		}
	}
	if (!port)
		return 0;
	rev_key->dst_port = port;
	struct ct_value *held = ct.lookup(rev_key);
	if (!held || held->type != CT_TYPE_NAT_REV)
		return 0;
	struct ct_key holder = held->twin;
	if (ct_forget(rev_key, held, &holder, CT_IF_HALF_OPEN, CT_FORGET_LIVE_FWD) < 0 || ct.insert(rev_key, rev) != 0)
		return 0;
	return port;
}

/* Reserve the reply tuple (backend -> node_addr:port) for the flow fwd_key, whose new reply half
 * is rev: returns the port (be), or 0 when every candidate was another live flow's. *adopted is
 * set when the flow's own reply half was there already (kept as it is). A closed TCP flow frees
 * its port at once rather than after its conntrack timeout: at a thousand connections a second
 * the closed flows would otherwise hold most of the range, and a search that finds none drops
 * the SYN. */
static __always_inline __u16 snat_reserve(const struct packet *p, const struct ct_key *fwd_key, __u32 be_addr,
					  __u16 be_port, __u32 node_addr, struct ct_value *rev,
					  struct ct_key *rev_key, int *adopted)
{
	__u32 hash = lb_flow_hash(p);

	ct_reply_key(p, be_addr, be_port, node_addr, 0, rev_key);
	*adopted = 0;
	if (ct_tcp_midstream(p)) {
		/* A connection going on whose forward half was lost: its reply half is at one of the
		 * candidates, maybe behind one freed since. Look for it first. */
		for (__u32 i = 0; i < SNAT_TRIES; i++) {
			rev_key->dst_port = snat_candidate(p, hash, i);
			struct ct_value *held = ct.lookup(rev_key);
			if (held && held->type == CT_TYPE_NAT_REV && held->last_seen_ns != CT_CLAIMED &&
			    ct_key_equal(&held->twin, fwd_key) && !ct_tcp_closed(held)) {
				ct_add_tcp_bits(held, ct_tcp_bits(p, 0) & (CT_TCP_FIN_FWD | CT_TCP_RST | CT_TCP_ACK_FWD));
				*adopted = 1;
				return rev_key->dst_port;
			}
		}
	}
	for (__u32 i = 0; i < SNAT_TRIES; i++) {
		rev_key->dst_port = snat_candidate(p, hash, i);
		enum ct_reservation got = ct_reserve_reply(p, rev_key, fwd_key, rev, 0, NULL);
		if (got != CT_TAKEN) {
			*adopted = got == CT_ADOPTED;
			return rev_key->dst_port;
		}
	}
	return snat_reclaim(p, fwd_key, hash, rev, rev_key);
}
