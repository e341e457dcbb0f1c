/* The service decision, one place for every hook that makes it: a packet at a pod veth or an
 * uplink (tc), a host socket at connect() or sendto() (bpf/sock.c). Frontend lookup, which backends
 * a client may get (traffic policies), what it gets when there are none, and the backend choice. */
#pragma once
#include "consts.h"
#include "maps.h"
#include "parse.h"

static __always_inline struct nat_fe_value *lb_lookup(__u32 addr, __u16 port, __u8 proto)
{
	struct nat_fe_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.addr = addr;
	key.port = port;
	key.proto = proto;
	return nat_fe.lookup(&key);
}

static __always_inline struct nat_fe_value *lb_lookup_frontend(const struct packet *p)
{
	return lb_lookup(p->daddr, p->dport, p->proto);
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
	struct svc_ip_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.addr = addr;
	return svc_ips.lookup(&key) != NULL;
}

/* lb_is_service_ip() behind the bit test: what most packets that ask are not. */
static __always_inline int lb_is_cluster_ip(__u32 addr)
{
	return lb_maybe_frontend_addr(addr) && lb_is_service_ip(addr);
}

/* splitmix64's finalizer: every input bit moves every output bit. */
static __always_inline __u32 lb_mix(__u64 h)
{
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return (__u32)h;
}

/* The backend choice is the flow's own hash, not a random number: a flow whose conntrack entries
 * the full LRU evicted mid-connection comes back to the backend it had (while the service's
 * backends stay the same), instead of being sent to another that answers with a reset. Katran
 * and Maglev choose by hash for the same reason. Uniform over a client's source ports. */
static __always_inline __u32 lb_flow_hash(const struct packet *p)
{
	return lb_mix(((__u64)p->saddr << 32 | p->daddr) ^ ((__u64)p->sport << 48 | (__u64)p->dport << 32 | p->proto));
}

/* loadBalancerSourceRanges: may this client reach this frontend from outside? */
static __always_inline int lb_source_allowed(const struct nat_fe_value *fe, __u32 saddr)
{
	if (!(fe->flags & NAT_FLG_SRC_RANGES))
		return 1;
	struct src_range_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.prefixlen = SRC_RANGE_PREFIX_BASE + 32;   /* all of id, family and the address */
	key.id = fe->id;
	key.addr = saddr;
	return src_ranges.lookup(&key) != NULL;
}

/* Among the first `n` ordinals of fe's backends (all of them, or the local ones, which come
 * first), by hash, in the generation of slots fe reads. */
static __always_inline struct nat_be_value *lb_pick_among(const struct nat_fe_value *fe, __u32 n, __u32 hash,
							  __u32 *ordinal)
{
	struct nat_be_key key = {
		.id = fe->id,
		.gen = fe->gen,
		.ordinal = hash % n,
	};
	*ordinal = key.ordinal;
	return nat_be.lookup(&key);
}

enum lb_verdict {
	LB_BACKEND,            /* *be is the backend */
	LB_NO_ENDPOINTS,       /* none at all: refused like kube-proxy (REJECT_NO_ENDPOINTS), or dropped */
	LB_NO_LOCAL_ENDPOINT,  /* a Local traffic policy and none on this node: dropped, as kube-proxy does */
	LB_NO_BACKEND,         /* an empty slot: the writer's order forbids it */
};

/* A new connection to frontend fe. From inside the cluster (a pod, a host process) the backends
 * are fe->count: internalTrafficPolicy Local made those the local ones already, and a NodePort or
 * LB address reached from inside uses the cluster set, as kube-proxy does for pods and local
 * processes. From outside (the uplink) externalTrafficPolicy Local narrows them to the local
 * ordinals. `*ordinal` tells the uplink whether the backend is local (ordinal < fe->local). */
static __always_inline int lb_local_only(const struct nat_fe_value *fe, int from_outside)
{
	return from_outside ? fe->flags & NAT_FLG_EXTERNAL_LOCAL :
			      fe->flags & (NAT_FLG_INTERNAL_LOCAL | NAT_FLG_EXTERNAL_LOCAL);
}

/* How many of fe's backends (ordinals 0..n-1) such a client may get. */
static __always_inline __u32 lb_candidates(const struct nat_fe_value *fe, int from_outside)
{
	return from_outside && lb_local_only(fe, from_outside) ? fe->local : fe->count;
}

static __always_inline enum lb_verdict lb_decide(const struct nat_fe_value *fe, int from_outside, __u32 hash,
						 struct nat_be_value **be, __u32 *ordinal)
{
	int local_only = lb_local_only(fe, from_outside);
	__u32 n = lb_candidates(fe, from_outside);

	if (n == 0)
		return local_only ? LB_NO_LOCAL_ENDPOINT : LB_NO_ENDPOINTS;
	*be = lb_pick_among(fe, n, hash, ordinal);
	return *be ? LB_BACKEND : LB_NO_BACKEND;
}
