/* Source NAT towards a backend on another node: the node's address, and a source port no other
 * flow to that backend uses (the reply's conntrack key must be unique). */
#pragma once
#include "conntrack.h"

#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE (65536 - SNAT_PORT_MIN)
#define SNAT_TRIES 8

/* Returns a port (be) for which no live reply key (backend -> node_addr:port) exists, or 0 if none
 * was free; rev_key is scratch space for the lookups. A closed TCP flow frees its port at once
 * rather than after its conntrack timeout: at a thousand connections a second the closed flows
 * would otherwise hold most of the range, and a port search that finds none drops the SYN. */
static __always_inline __u16 snat_pick_port(const struct packet *p, __u32 be_addr, __u16 be_port,
					    __u32 node_addr, struct ct_key *rev_key)
{
	__builtin_memset(rev_key, 0, sizeof(*rev_key));   /* padding is part of the key */
	rev_key->src_addr = be_addr;
	rev_key->dst_addr = node_addr;
	rev_key->src_port = be_port;
	rev_key->proto = p->proto;
	__u16 port = p->sport;   /* the client's own port first: most often free */
#pragma unroll
	for (int i = 0; i < SNAT_TRIES; i++) {
		rev_key->dst_port = port;
		struct ct_value *taken = ct.lookup(rev_key);
		if (!taken)
			return port;
		if (p->proto == IPPROTO_TCP && ct_tcp_closed(taken)) {
			ct_forget_closed(rev_key, taken);
			return port;
		}
		port = bpf_htons(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE);
	}
	return 0;
}
