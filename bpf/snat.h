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
	return 0;
}
