/* The per-packet benchmark's references (bench/packets.py); never attached anywhere.
 *
 *   parse_only       the entry programs' parsing and nothing else: no map lookup, no rewrite, no
 *                    helper. parse_packet() is the very function from_workload/to_workload call,
 *                    inlined the same way; the parsed fields are handed to an empty asm statement
 *                    so the compiler cannot drop the work as dead stores.
 *   ct_lookup_floor  parsing and one lookup of the packet's tuple in an LRU hash of conntrack's
 *                    key, value and size: what any established packet costs at least.
 *   ct_writes_floor  parsing and the two LRU writes a new flow makes (its NAT_FWD and NAT_REV
 *                    entries): what any new flow costs at least.
 *   ..._nocommon, ..._hash, ..._hash_noprealloc   the same two floors on the other designs a
 *                    conntrack could have (issue 21): an LRU with BPF_F_NO_COMMON_LRU (per-CPU
 *                    LRU lists, Katran's), a plain preallocated hash kept by a sweep (Calico's),
 *                    and a hash allocating each element on insert.
 * The floors' maps are their own (not pinned): the benchmark fills them. */
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
#include "parse.h"

BPF_TABLE("lru_hash", struct ct_key, struct ct_value, floor_ct, CT_MAX);
BPF_F_TABLE("lru_hash", struct ct_key, struct ct_value, floor_ct_nocommon, CT_MAX, BPF_F_NO_COMMON_LRU);
BPF_TABLE("hash", struct ct_key, struct ct_value, floor_ct_hash, CT_MAX);
BPF_F_TABLE("hash", struct ct_key, struct ct_value, floor_ct_hash_noprealloc, CT_MAX, BPF_F_NO_PREALLOC);

static __always_inline void key_of(const struct packet *p, struct ct_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->src_addr = p->saddr;
	k->dst_addr = p->daddr;
	k->src_port = p->sport;
	k->dst_port = p->dport;
	k->proto = p->proto;
}

int parse_only(struct __sk_buff *skb)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);

	/* Keep every parsed field live, as the entry programs use them. */
	asm volatile("" : : "r"(&p), "r"(res) : "memory");
	if (res != PARSE_OK || !is_l4_with_ports(&p))
		return TC_ACT_NEXT;
	return TC_ACT_NEXT;
}

/* The floors' packet work, all but the map calls (bcc allows those only in plain code, not in
 * a macro: each design's two floors below are written out). */
static __always_inline int floor_key(struct __sk_buff *skb, struct ct_key *key)
{
	struct packet p;

	if (parse_packet(skb, &p) != PARSE_OK || !is_l4_with_ports(&p))
		return -1;
	key_of(&p, key);
	return 0;
}

static __always_inline int floor_pair(struct __sk_buff *skb, struct ct_key *fwd_key, struct ct_key *rev_key,
				      struct ct_value *fwd, struct ct_value *rev)
{
	struct packet p;

	if (parse_packet(skb, &p) != PARSE_OK || !is_l4_with_ports(&p))
		return -1;
	key_of(&p, fwd_key);
	*rev_key = *fwd_key;
	rev_key->src_addr = p.daddr;   /* stands in for the backend */
	rev_key->dst_addr = p.saddr;
	rev_key->src_port = p.dport;
	rev_key->dst_port = p.sport;
	fwd->type = CT_TYPE_NAT_FWD;
	fwd->twin = *rev_key;
	rev->type = CT_TYPE_NAT_REV;
	rev->twin = *fwd_key;
	return 0;
}

int ct_lookup_floor(struct __sk_buff *skb)
{
	struct ct_key key;
	return floor_key(skb, &key) == 0 && floor_ct.lookup(&key) ? TC_ACT_NEXT : TC_ACT_SHOT;
}

int ct_writes_floor(struct __sk_buff *skb)
{
	struct ct_key fwd_key, rev_key;
	struct ct_value fwd = {}, rev = {};
	if (floor_pair(skb, &fwd_key, &rev_key, &fwd, &rev) < 0 ||
	    floor_ct.update(&rev_key, &rev) < 0 || floor_ct.update(&fwd_key, &fwd) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_NEXT;
}

int ct_lookup_floor_nocommon(struct __sk_buff *skb)
{
	struct ct_key key;
	return floor_key(skb, &key) == 0 && floor_ct_nocommon.lookup(&key) ? TC_ACT_NEXT : TC_ACT_SHOT;
}

int ct_writes_floor_nocommon(struct __sk_buff *skb)
{
	struct ct_key fwd_key, rev_key;
	struct ct_value fwd = {}, rev = {};
	if (floor_pair(skb, &fwd_key, &rev_key, &fwd, &rev) < 0 ||
	    floor_ct_nocommon.update(&rev_key, &rev) < 0 || floor_ct_nocommon.update(&fwd_key, &fwd) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_NEXT;
}

int ct_lookup_floor_hash(struct __sk_buff *skb)
{
	struct ct_key key;
	return floor_key(skb, &key) == 0 && floor_ct_hash.lookup(&key) ? TC_ACT_NEXT : TC_ACT_SHOT;
}

int ct_writes_floor_hash(struct __sk_buff *skb)
{
	struct ct_key fwd_key, rev_key;
	struct ct_value fwd = {}, rev = {};
	if (floor_pair(skb, &fwd_key, &rev_key, &fwd, &rev) < 0 ||
	    floor_ct_hash.update(&rev_key, &rev) < 0 || floor_ct_hash.update(&fwd_key, &fwd) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_NEXT;
}

int ct_lookup_floor_hash_noprealloc(struct __sk_buff *skb)
{
	struct ct_key key;
	return floor_key(skb, &key) == 0 && floor_ct_hash_noprealloc.lookup(&key) ? TC_ACT_NEXT : TC_ACT_SHOT;
}

int ct_writes_floor_hash_noprealloc(struct __sk_buff *skb)
{
	struct ct_key fwd_key, rev_key;
	struct ct_value fwd = {}, rev = {};
	if (floor_pair(skb, &fwd_key, &rev_key, &fwd, &rev) < 0 ||
	    floor_ct_hash_noprealloc.update(&rev_key, &rev) < 0 ||
	    floor_ct_hash_noprealloc.update(&fwd_key, &fwd) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_NEXT;
}
