/* Service lookup and backend choice. */
#pragma once
#include "maps.h"
#include "parse.h"

static __always_inline struct nat_fe_value *lb_lookup_frontend(const struct packet *p)
{
	struct nat_fe_key key = {
		.addr = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	return nat_fe.lookup(&key);
}

/* Might a service frontend be at addr (a ClusterIP, externalIP, LB or node address)? No: nothing
 * there is a service's, and it took no hash lookup to know. Yes: maybe (another address can share
 * the bit), the lookups decide. */
static __always_inline int lb_maybe_frontend_addr(__u32 addr)
{
	__u32 bit = (addr * (__u32)SVC_ADDR_HASH_MUL) >> (32 - SVC_ADDR_BITS_LOG2);
	__u32 word = bit / 64;
	__u64 *bits = svc_addr_bits.lookup(&word);

	return bits && (*bits & (1ULL << (bit % 64)));
}

static __always_inline int lb_is_service_ip(__u32 addr)
{
	return svc_ips.lookup(&addr) != NULL;
}

/* lb_is_service_ip() behind the bit test: what most packets that ask are not. */
static __always_inline int lb_is_cluster_ip(__u32 addr)
{
	return lb_maybe_frontend_addr(addr) && lb_is_service_ip(addr);
}

/* The backend choice is the flow's own hash, not a random number: a flow whose conntrack entries
 * the full LRU evicted mid-connection comes back to the backend it had (while the service's
 * backends stay the same), instead of being sent to another that answers with a reset. Katran
 * and Maglev choose by hash for the same reason. Uniform over a client's source ports. */
static __always_inline __u32 lb_flow_hash(const struct packet *p)
{
	__u64 h = ((__u64)p->saddr << 32 | p->daddr) ^ ((__u64)p->sport << 48 | (__u64)p->dport << 32 | p->proto);

	/* splitmix64's finalizer: every input bit moves every output bit */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return (__u32)h;
}

/* Among the frontend's backends (ordinals 0..count-1 of its generation). */
static __always_inline struct nat_be_value *lb_pick_backend(const struct nat_fe_value *fe, const struct packet *p)
{
	struct nat_be_key key = {
		.id = fe->id,
		.gen = fe->gen,
		.ordinal = lb_flow_hash(p) % fe->count,
	};
	return nat_be.lookup(&key);
}

/* loadBalancerSourceRanges: may this client reach this frontend from outside? */
static __always_inline int lb_source_allowed(const struct nat_fe_value *fe, __u32 saddr)
{
	if (!(fe->flags & NAT_FLG_SRC_RANGES))
		return 1;
	struct src_range_key key = {
		.prefixlen = 64,   /* all of id and all of the address */
		.id = fe->id,
		.addr = saddr,
	};
	return src_ranges.lookup(&key) != NULL;
}

/* Among the first `n` ordinals: all backends (count), or the local ones (local); by the flow's
 * hash, as lb_pick_backend(). */
static __always_inline struct nat_be_value *lb_pick_among(const struct nat_fe_value *fe, __u32 n,
							  const struct packet *p, __u32 *ordinal)
{
	struct nat_be_key key = {
		.id = fe->id,
		.gen = fe->gen,
		.ordinal = lb_flow_hash(p) % n,
	};
	*ordinal = key.ordinal;
	return nat_be.lookup(&key);
}
