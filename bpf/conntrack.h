/* Conntrack: a NATed flow is a NAT_FWD entry (client -> VIP, as the client sends) and a NAT_REV
 * entry (backend -> client, as the backend answers). The fast path is one lookup of the packet's
 * own tuple; the twin is touched only when TCP state changes. Expiry is the agent's sweep (and
 * the LRU's); the programs only refuse to reuse a closed TCP flow for a new SYN. */
#pragma once
#include "maps.h"
#include "parse.h"
#include "clock.h"

static __always_inline void ct_key_of(const struct packet *p, struct ct_key *k)
{
	k->src_addr = p->saddr;
	k->dst_addr = p->daddr;
	k->src_port = p->sport;
	k->dst_port = p->dport;
	k->proto = p->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline __u8 ct_tcp_bits(const struct packet *p, int reply)
{
	__u8 bits = 0;

	if (p->proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & TCP_FL_SYN)
		bits |= reply ? CT_TCP_SYN_REV : CT_TCP_SYN_FWD;
	if (p->tcp_flags & TCP_FL_FIN)
		bits |= reply ? CT_TCP_FIN_REV : CT_TCP_FIN_FWD;
	if (p->tcp_flags & TCP_FL_RST)
		bits |= CT_TCP_RST;
	if (reply && (p->tcp_flags & TCP_FL_ACK))
		bits |= CT_TCP_ACK_REV;
	return bits;
}

static __always_inline int ct_key_equal(const struct ct_key *a, const struct ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

/* Both sides finished (or one reset): the flow's tuple may carry a new connection. */
static __always_inline int ct_tcp_closed(const struct ct_value *rev)
{
	return (rev->tcp_seen & CT_TCP_RST) ||
	       (rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)) == (CT_TCP_FIN_FWD | CT_TCP_FIN_REV);
}

/* Forget a closed flow by its NAT_REV entry; its NAT_FWD twin only while that still names this
 * entry (a client that reopened its tuple already has a newer pair). */
static __always_inline void ct_forget_closed(struct ct_key *rev_key, const struct ct_value *rev)
{
	struct ct_key fwd_key = rev->twin;
	struct ct_value *fwd = ct.lookup(&fwd_key);
	if (fwd && ct_key_equal(&fwd->twin, rev_key))
		ct.delete(&fwd_key);
	ct.delete(rev_key);
}

/* A SYN (without ACK) on a flow that already closed starts a new connection on a reused port. */
static __always_inline int ct_is_reopen(const struct packet *p, const struct ct_value *fwd)
{
	if (p->proto != IPPROTO_TCP ||
	    (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != TCP_FL_SYN)
		return 0;
	struct ct_value *rev = ct.lookup((struct ct_key *)&fwd->twin);
	return !rev || (rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV | CT_TCP_RST));
}

/* last_seen only moves forward, and is written only when the (per-jiffy, clock.h) clock moved:
 * a flow's packets mostly read its entry instead of dirtying its cache line each time. */
static __always_inline void ct_touch_time(struct ct_value *entry, __u64 now)
{
	if (now > entry->last_seen_ns)
		entry->last_seen_ns = now;
}

/* Record a forward packet: last seen, and FIN/RST in the flow's state (kept in NAT_REV). */
static __always_inline void ct_touch_fwd(const struct packet *p, struct ct_value *fwd, __u64 now)
{
	ct_touch_time(fwd, now);
	__u8 bits = ct_tcp_bits(p, 0) & (CT_TCP_FIN_FWD | CT_TCP_RST);
	if (!bits)
		return;
	struct ct_value *rev = ct.lookup((struct ct_key *)&fwd->twin);
	if (rev && (rev->tcp_seen & bits) != bits)
		rev->tcp_seen |= bits;  /* racing CPUs only ever add bits */
}

static __always_inline void ct_touch_rev(const struct packet *p, struct ct_value *rev, __u64 now)
{
	ct_touch_time(rev, now);
	__u8 bits = ct_tcp_bits(p, 1);
	if ((rev->tcp_seen & bits) != bits)
		rev->tcp_seen |= bits;  /* racing CPUs only ever add bits */
}

/* A flow replaced at fwd_key (a SYN reopening it; old is the entry there) takes its reply entry
 * along, unless the new flow reuses that very tuple: left behind, it would still translate the
 * old backend's packets, and its stale-pair check would delete the new flow's forward half.
 * Decided on a copy of old's twin, and only a NAT_REV that names fwd_key is deleted: whatever
 * old's memory holds by now (an LRU entry can be recycled under a pointer), nothing else is. */
static __always_inline void ct_forget_replaced(const struct ct_key *fwd_key, const struct ct_key *rev_key,
					       const struct ct_value *old)
{
	if (!old || old->type != CT_TYPE_NAT_FWD)
		return;
	struct ct_key old_rev_key = old->twin;
	if (ct_key_equal(&old_rev_key, rev_key))
		return;
	struct ct_value *old_rev = ct.lookup(&old_rev_key);
	if (old_rev && old_rev->type == CT_TYPE_NAT_REV && ct_key_equal(&old_rev->twin, fwd_key))
		ct.delete(&old_rev_key);
}

/* May the flow fwd_key take the reply tuple rev_key? Not from another live flow: that flow's
 * replies would come back as ours. A closed flow that holds it is forgotten; a leftover no flow
 * names (a UDP flow moved off a gone backend) is overwritten. */
static __always_inline int ct_claim_reply(const struct packet *p, struct ct_key *rev_key,
					  const struct ct_key *fwd_key)
{
	struct ct_value *held = ct.lookup(rev_key);

	if (!held || (held->type == CT_TYPE_NAT_REV && ct_key_equal(&held->twin, fwd_key)))
		return 0;
	if (held->type != CT_TYPE_NAT_REV)
		return -1;   /* another flow's forward tuple */
	struct ct_value *owner = ct.lookup(&held->twin);
	if (!owner || owner->type != CT_TYPE_NAT_FWD || !ct_key_equal(&owner->twin, rev_key))
		return 0;
	if (p->proto != IPPROTO_TCP || !ct_tcp_closed(held))
		return -1;
	ct_forget_closed(rev_key, held);
	return 0;
}

#ifndef EEXIST
#define EEXIST 17
#endif

/* Both halves of a new NATed flow: p is what the client sent; the backend (be_addr, be_port)
 * answers to (reply_dst, reply_port). The caller has set flags and SNAT fields of fwd and rev,
 * and passes what its lookup of p's own tuple found (old: NULL or the NAT_FWD entry being
 * reopened), so it is not looked up again.
 * The REV half is written first, so a FWD entry never exists without its twin. Fails (the caller
 * drops the packet) when another live flow has the same reply tuple; the client's retry meets
 * the same backend (the choice is the flow's hash, lb.h) until that flow ends. */
static __always_inline int ct_create_flow(const struct packet *p, __u32 svc_id, __u32 be_addr, __u16 be_port,
					  __u32 reply_dst, __u16 reply_port, struct ct_value *fwd,
					  struct ct_value *rev, __u64 now, const struct ct_value *old)
{
	struct ct_key fwd_key = {}, rev_key = {
		.src_addr = be_addr,
		.dst_addr = reply_dst,
		.src_port = be_port,
		.dst_port = reply_port,
		.proto = p->proto,
	};

	ct_key_of(p, &fwd_key);
	fwd->created_ns = rev->created_ns = now;
	fwd->last_seen_ns = rev->last_seen_ns = now;
	fwd->svc_id = rev->svc_id = svc_id;
	fwd->type = CT_TYPE_NAT_FWD;
	fwd->nat_addr = be_addr;
	fwd->nat_port = be_port;
	fwd->twin = rev_key;
	rev->type = CT_TYPE_NAT_REV;
	rev->nat_addr = p->daddr;
	rev->nat_port = p->dport;
	rev->tcp_seen = ct_tcp_bits(p, 0);
	rev->twin = fwd_key;

	/* The reply tuple is almost always free: then the write says so itself (BPF_NOEXIST) and the
	 * clash check's lookup is not needed. Only when it is taken (or is known to be: the flow
	 * being reopened holds it) does ct_claim_reply() look at who holds it. */
	int err = -EEXIST;
	if (!old || !ct_key_equal(&old->twin, &rev_key))
		err = ct.insert(&rev_key, rev);
	if (err == -EEXIST) {
		if (ct_claim_reply(p, &rev_key, &fwd_key) < 0)
			return -1;
		err = ct.update(&rev_key, rev);
	}
	if (err < 0)
		return -1;
	/* After the REV write, which may have recycled old's memory (LRU eviction): harmless, see
	 * ct_forget_replaced(). */
	ct_forget_replaced(&fwd_key, &rev_key, old);
	return ct.update(&fwd_key, fwd);
}

/* A SYN-ACK meeting a flow that already closed answers a new connection that reuses the ports
 * (a direct one, not through the service): forget the stale pair and leave the packet alone. */
static __always_inline int ct_forget_if_stale(const struct packet *p, struct ct_key *key,
					     const struct ct_value *rev)
{
	if (p->proto != IPPROTO_TCP ||
	    (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != (TCP_FL_SYN | TCP_FL_ACK) ||
	    !(rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV | CT_TCP_RST)))
		return 0;
	ct_forget_closed(key, rev);   /* its twin only while that still names it */
	return 1;
}

/* The sweep's delete (bpf/ct_sweep.c): only while the entry at key still holds exactly the value
 * judged expired. A SYN reusing a closed flow's port puts a new flow at the same key; deleting it
 * would leave its SYN-ACK untranslated (the client resets it and retries a second later). Here the
 * check and the delete are a few instructions apart, not two syscalls. */
static __always_inline int ct_delete_if_unchanged(struct ct_key *key, const struct ct_value *judged)
{
	const __u64 *now = (const __u64 *)ct.lookup(key), *was = (const __u64 *)judged;

	if (!now)
		return 0;
#pragma unroll
	for (int i = 0; i < sizeof(*judged) / sizeof(__u64); i++)
		if (now[i] != was[i])
			return 0;
	return ct.delete(key) == 0;
}
