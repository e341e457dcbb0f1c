/* Conntrack: a NATed flow is a NAT_FWD entry (client -> VIP, as the client sends) and a NAT_REV
 * entry (backend -> client, as the backend answers). The fast path is one lookup of the packet's
 * own tuple; the twin is looked at when TCP state changes and once per clock tick. Expiry is the
 * agent's sweep (and the LRU's); the programs only refuse to reuse a closed TCP flow for a new SYN.
 *
 * Every CPU runs these at once. What keeps each pair whole and two flows apart:
 *  - a reply tuple is only ever taken by inserting it where it is absent (BPF_NOEXIST), so two
 *    flows never share one; a taken one is given up only by a flow that closed or moved on;
 *  - an existing reply half is deleted or replaced only by whoever claimed it first: swapped its
 *    last_seen_ns, atomically, from the value read to CT_CLAIMED, then checked to still be the
 *    entry decided on (the LRU recycles a deleted element at once, under other CPUs' pointers).
 *    The sweep claims both halves the same way;
 *  - a pair that lost a half (LRU eviction) gets it back whole from the other: the forward half
 *    by the client's next packet (the flow's hash picks the same backend, snat.h's candidate order
 *    finds the same SNAT port, ct_reserve_reply() adopts the reply half as it is, TCP state and
 *    all), the reply half once per tick from the forward half (ct_check_reply_half());
 *  - TCP flags are added with an atomic OR.
 */
#pragma once
#include "maps.h"
#include "parse.h"
#include "clock.h"

/* A new flow's two values, 224 bytes with layout 8's 16-byte addresses: too much for the 512-byte
 * stack beside the rest, so they are built in a per-CPU slot. A tc or XDP program runs to its end
 * on its CPU without another of them starting there meanwhile (softirq, or bottom halves off), so
 * one slot a CPU is enough; the host-socket programs (preemptible) never use it. Pinned, though it
 * holds nothing between packets: from_uplink's tail calls hand a flow over in it, and while a
 * restarted agent fills the pinned uplink_calls slot by slot, one generation's program may call
 * the other's (bpf/uplink.c); both must see the same slot. */
struct ct_pair_scratch {
	struct ct_value fwd;
	struct ct_value rev;
};
BPF_TABLE_PINNED("percpu_array", __u32, struct ct_pair_scratch, ct_scratch, 1, PINNED(ct_scratch));

/* The slot, zeroed; NULL never happens (an array of one), but the verifier wants it checked. */
static __always_inline struct ct_pair_scratch *ct_scratch_pair(void)
{
	__u32 zero = 0;
	struct ct_pair_scratch *s = ct_scratch.lookup(&zero);
	if (s)
		__builtin_memset(s, 0, sizeof(*s));
	return s;
}

static __always_inline void ct_key_of(const struct packet *p, struct ct_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));   /* the IPv6 words, family (FAMILY_IPV4) and padding */
	k->src_addr = p->saddr;
	k->dst_addr = p->daddr;
	k->src_port = p->sport;
	k->dst_port = p->dport;
	k->proto = p->proto;
}

static __always_inline __u64 ct_tcp_bits(const struct packet *p, int reply)
{
	__u64 bits = 0;

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
	if (!reply && (p->tcp_flags & (TCP_FL_ACK | TCP_FL_SYN)) == TCP_FL_ACK)
		bits |= CT_TCP_ACK_FWD;   /* the client has the backend's SYN-ACK */
	return bits;
}

/* A TCP packet without SYN continues a connection (nothing else opens one). */
static __always_inline int ct_tcp_midstream(const struct packet *p)
{
	return p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_FL_SYN);
}

static __always_inline int ct_key_equal(const struct ct_key *a, const struct ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	/* One branch, not five: each would be a path more for the verifier at every caller. */
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* Both sides finished (or one reset): the flow's tuple may carry a new connection. */
static __always_inline int ct_tcp_closed(const struct ct_value *rev)
{
	return (rev->tcp_seen & CT_TCP_RST) ||
	       (rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)) == (CT_TCP_FIN_FWD | CT_TCP_FIN_REV);
}

/* What an entry must still be for its claimer to delete it (ct_forget()). */
enum ct_forget_if {
	CT_IF_NAMED,    /* still names the same twin */
	CT_IF_ENDING,   /* and has seen a FIN or RST */
	CT_IF_CLOSED,   /* and is closed (ct_tcp_closed()) */
	CT_IF_HALF_OPEN,   /* and has not seen the client's ACK (snat.h's reclaim) */
};

static __always_inline int ct_still(const struct ct_value *entry, const struct ct_key *twin, enum ct_forget_if cond)
{
	if (!ct_key_equal(&entry->twin, twin))
		return 0;
	if (cond == CT_IF_CLOSED)
		return ct_tcp_closed(entry);
	if (cond == CT_IF_HALF_OPEN)
		return !(entry->tcp_seen & CT_TCP_ACK_FWD);
	if (cond == CT_IF_ENDING)
		return (entry->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV | CT_TCP_RST)) != 0;
	return 1;
}

/* Forget the reply half at rev_key (rev: what its lookup gave) and, with with_fwd, its forward
 * twin while that still names it (a client that reopened its tuple already has a newer pair).
 *
 * Only its claimer deletes an entry: last_seen swapped to CT_CLAIMED from what was read, so one
 * CPU wins, and a touch never moves a claimed entry (ct_touch_time()). The LRU map recycles a
 * deleted element at once, so the pointer may meanwhile hold another flow's entry, at this key or
 * another: after the claim, the element must still be the one at rev_key and still be what the
 * decision was made on (cond, naming twin), or the claim is given back. -1 when it was not ours
 * to forget (claimed by someone else, or changed). */
#define CT_FORGET_LIVE_FWD 2   /* with_fwd: the forward half of a flow that is still live goes too */
static __always_inline int ct_forget(const struct ct_key *rev_key, struct ct_value *rev, const struct ct_key *twin,
				     enum ct_forget_if cond, int with_fwd)
{
	__u64 seen = rev->last_seen_ns;
	if (seen == CT_CLAIMED || __sync_val_compare_and_swap(&rev->last_seen_ns, seen, CT_CLAIMED) != seen)
		return -1;
	if (ct.lookup((struct ct_key *)rev_key) != rev || rev->type != CT_TYPE_NAT_REV || !ct_still(rev, twin, cond)) {
		rev->last_seen_ns = seen;   /* ours to give back: nobody else writes a claimed entry */
		return -1;
	}
	if (with_fwd) {
		struct ct_key fwd_key = *twin;
		struct ct_value *fwd = ct.lookup(&fwd_key);
		if (fwd && fwd->type == CT_TYPE_NAT_FWD && ct_key_equal(&fwd->twin, rev_key)) {
			/* CT_FORGET_LIVE_FWD: a live flow's (snat.h's reclaim): claimed too, so a packet of
			 * the flow holding this forward half that finds its reply half gone (deleted next)
			 * does not put it back (ct_check_reply_half()). A swap lost to a touch (once a
			 * tick) leaves that window open, as before. */
			if (with_fwd == CT_FORGET_LIVE_FWD)
				__sync_val_compare_and_swap(&fwd->last_seen_ns, fwd->last_seen_ns, CT_CLAIMED);
			ct.delete(&fwd_key);
		}
	}
	ct.delete((struct ct_key *)rev_key);
	return 0;
}

/* A SYN (without ACK) on a flow that already closed starts a new connection on a reused port.
 * So does one whose reply half is gone or is another flow's by now (another CPU took the closed
 * pair's reply tuple for its own flow): translated with the old forward half, within the tick
 * that skips ct_check_reply_half(), its SYN would carry a SNAT port whose replies go to the
 * other flow's client. */
static __always_inline int ct_is_reopen_of(const struct packet *p, const struct ct_key *fwd_key,
					   const struct ct_value *fwd, struct ct_value **old_rev)
{
	*old_rev = NULL;
	if (p->proto != IPPROTO_TCP ||
	    (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != TCP_FL_SYN)
		return 0;
	struct ct_value *rev = ct.lookup((struct ct_key *)&fwd->twin);
	*old_rev = rev;
	return !rev || rev->type != CT_TYPE_NAT_REV || !ct_key_equal(&rev->twin, fwd_key) ||
	       (rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV | CT_TCP_RST));
}

/* ct_is_reopen_of() with *old_rev: what is at the forward half's twin (NULL: nothing), which the
 * reopen starts from instead of looking it up again (ct_create_flow()). */
static __always_inline int ct_is_reopen(const struct packet *p, const struct ct_key *fwd_key,
					const struct ct_value *fwd)
{
	struct ct_value *old_rev;
	return ct_is_reopen_of(p, fwd_key, fwd, &old_rev);
}

/* last_seen only moves forward, and is written only when the (per-jiffy, clock.h) clock moved:
 * a flow's packets mostly read its entry instead of dirtying its cache line each time. That write
 * is a compare-and-swap (once a tick, so it costs nothing), so it never undoes a claim made since
 * the read, and a claimed entry (CT_CLAIMED, above any time) is never moved. */
static __always_inline void ct_touch_time(struct ct_value *entry, __u64 now)
{
	__u64 seen = entry->last_seen_ns;
	if (now > seen)
		__sync_val_compare_and_swap(&entry->last_seen_ns, seen, now);
}

static __always_inline void ct_add_tcp_bits(struct ct_value *rev, __u64 bits)
{
	if ((rev->tcp_seen & bits) != bits)
		__sync_fetch_and_or(&rev->tcp_seen, bits);   /* another CPU may add its bits meanwhile */
}

/* The client's first ACK (or a FIN or RST before it) on a flow whose forward half lacks
 * CT_TCP_ACK_FWD: into the reply half first, then the forward half. -1: the reply half is not this
 * flow's or is claimed (a SYN reclaiming the half-open flow's SNAT port, snat.h, or the sweep): the
 * packet must not leave with that port. The atomic OR comes before the claim check, as the claimer's
 * claim comes before it checks the bit (ct_forget()): one of the two sees the other, so a flow is
 * never both acknowledged and reclaimed. */
static __always_inline int ct_first_ack(const struct packet *p, const struct ct_key *fwd_key, struct ct_value *fwd)
{
	__u64 bits = ct_tcp_bits(p, 0) & (CT_TCP_FIN_FWD | CT_TCP_RST | CT_TCP_ACK_FWD);
	if (!bits)
		return 0;   /* a SYN again, or not TCP */
	struct ct_key rev_key = fwd->twin;
	struct ct_value *rev = ct.lookup(&rev_key);
	if (!rev || rev->type != CT_TYPE_NAT_REV || !ct_key_equal(&rev->twin, fwd_key))
		return -1;   /* the tick's check mends a lost reply half; the client sends again */
	__sync_fetch_and_or(&rev->tcp_seen, bits);
	if (rev->last_seen_ns == CT_CLAIMED || rev->type != CT_TYPE_NAT_REV || !ct_key_equal(&rev->twin, fwd_key))
		return -1;
	if (bits & CT_TCP_ACK_FWD)
		__sync_fetch_and_or(&fwd->tcp_seen, CT_TCP_ACK_FWD);
	return 0;
}

/* Record a forward packet: last seen, and FIN/RST in the flow's state (kept in NAT_REV). Until the
 * client's first ACK, ct_first_ack() (once the bit is in, this is one well-predicted branch): -1
 * when the packet must be dropped. */
static __always_inline int ct_touch_fwd(const struct packet *p, const struct ct_key *fwd_key, struct ct_value *fwd,
					__u64 now)
{
	ct_touch_time(fwd, now);
	if (!(fwd->tcp_seen & CT_TCP_ACK_FWD))
		return ct_first_ack(p, fwd_key, fwd);
	__u64 bits = ct_tcp_bits(p, 0) & (CT_TCP_FIN_FWD | CT_TCP_RST);
	if (!bits)
		return 0;
	struct ct_value *rev = ct.lookup((struct ct_key *)&fwd->twin);
	if (rev)
		ct_add_tcp_bits(rev, bits);
	return 0;
}

static __always_inline void ct_touch_rev(const struct packet *p, struct ct_value *rev, __u64 now)
{
	ct_touch_time(rev, now);
	__u64 bits = ct_tcp_bits(p, 1);
	if (bits)
		ct_add_tcp_bits(rev, bits);
}

/* The reply half of the flow fwd_key, made from its forward half: what the flow's first packet
 * wrote, but the TCP state, which was in the lost half: a live flow (SYN seen, and the client's ACK
 * when the forward half has it), established again by the backend's next packet. */
static __always_inline void ct_reply_half_of(const struct ct_key *fwd_key, const struct ct_value *fwd,
					     struct ct_value *rev, __u64 now)
{
	rev->created_ns = fwd->created_ns;
	rev->last_seen_ns = now;
	rev->tcp_seen = fwd_key->proto == IPPROTO_TCP ? CT_TCP_SYN_FWD | (fwd->tcp_seen & CT_TCP_ACK_FWD) : 0;
	rev->type = CT_TYPE_NAT_REV;
	rev->flags = fwd->flags;
	rev->svc_id = fwd->svc_id;
	rev->nat_addr = fwd_key->dst_addr;
	rev->nat_port = fwd_key->dst_port;
	if (fwd->flags & CT_FLAG_SNAT) {
		rev->snat_addr = fwd_key->src_addr;
		rev->snat_port = (fwd->flags & CT_FLAG_UPLINK) ? fwd_key->src_port : 0;
	}
	rev->twin = *fwd_key;
}

/* Once per tick, the first forward packet of the tick checks that the flow's reply half is there
 * and is its own: a lost one is put back (the LRU evicts halves one at a time), so replies are
 * never left untranslated and the SNAT port never looks free while the flow lives. -1 when the
 * reply tuple belongs to another flow by now: the pair cannot be made whole, its forward half is
 * forgotten, and the caller starts the flow again (the backend's answer then ends it cleanly). */
static __always_inline int ct_check_reply_half(const struct ct_key *fwd_key, const struct ct_value *fwd, __u64 now)
{
	struct ct_key rev_key = fwd->twin;
	struct ct_value *rev = ct.lookup(&rev_key);

	if (!rev) {
		if (fwd->last_seen_ns == CT_CLAIMED)
			return 0;   /* the sweep claimed the pair and is deleting it: no mending */
		struct ct_pair_scratch *room = ct_scratch_pair();   /* the stack is too small for it */
		if (!room)
			return 0;
		ct_reply_half_of(fwd_key, fwd, &room->rev, now);
		if (ct.insert(&rev_key, &room->rev) == 0)
			return 0;
		rev = ct.lookup(&rev_key);
		if (!rev)
			return 0;   /* gone again at once: the next tick tries again */
	}
	if (rev->type == CT_TYPE_NAT_REV && ct_key_equal(&rev->twin, fwd_key))
		return 0;
	ct.delete((struct ct_key *)fwd_key);
	return -1;
}

/* XDP's part of the same check: is the reply half there and this flow's? (tc mends it if not.) */
static __always_inline int ct_reply_half_whole(const struct ct_key *fwd_key, const struct ct_value *fwd)
{
	struct ct_value *rev = ct.lookup((struct ct_key *)&fwd->twin);
	return rev && rev->type == CT_TYPE_NAT_REV && ct_key_equal(&rev->twin, fwd_key);
}

/* Whether the reply tuple of a new flow could be had (ct_reserve_reply()). */
enum ct_reservation {
	CT_RESERVED,   /* the new reply half is in */
	CT_ADOPTED,    /* this very flow's reply half was there (its forward half was lost, or another
			  CPU just made it): kept as it is, TCP state included */
	CT_TAKEN,      /* another live flow's: try another port, or give up */
};

/* An entry claimed by another CPU is deleted within a microsecond (ct_forget(), ct_sweep_flow()):
 * rather than give up a tuple that is about to be free (a SYN reusing a port the sweep is deleting
 * the closed flow of was dropped, its client retrying a second later), wait that long for it. The
 * entry at key afterwards: NULL when gone, else what is there (still claimed, or a new one). */
#define CT_CLAIM_WAIT 32   /* lookups, ~30 ns each */
static __always_inline struct ct_value *ct_wait_unclaimed(struct ct_key *key, struct ct_value *entry)
{
	for (int i = 0; i < CT_CLAIM_WAIT && entry && entry->last_seen_ns == CT_CLAIMED; i++)
		entry = ct.lookup(key);
	return entry;
}

/* Take the reply tuple rev_key for the flow fwd_key (rev: its new NAT_REV); wait: for one that
 * another CPU is deleting (a fixed tuple; a SNAT port search rather tries the next candidate);
 * held: what a lookup of rev_key just gave (a reopen's own closed pair, ct_is_reopen_of()), or
 * NULL. Given, the insert is not tried first: a refused LRU insert costs about what a successful
 * one does (an element is taken from the LRU before the key is checked), ~140 ns of a reopen's
 * ~480 (bench.packets); it is judged as a fresh lookup's would be (ct_forget() checks that it is
 * still there). Another flow's reply half is given up only when that flow closed (TCP) or moved
 * on (its forward half names another reply tuple); one whose forward half is missing is live:
 * another CPU may be writing it (the reply half goes first), or the flow lost it and gets it
 * back. This flow's own reply half is adopted as it is (with this packet's FIN or RST). */
static __always_inline enum ct_reservation ct_reserve_reply(const struct packet *p, struct ct_key *rev_key,
							    const struct ct_key *fwd_key, struct ct_value *rev, int wait,
							    struct ct_value *held)
{
	if (!held) {
		if (ct.insert(rev_key, rev) == 0)
			return CT_RESERVED;
		held = ct.lookup(rev_key);
	}
	if (wait)
		held = ct_wait_unclaimed(rev_key, held);
	if (!held)
		return ct.insert(rev_key, rev) == 0 ? CT_RESERVED : CT_TAKEN;
	if (held->last_seen_ns == CT_CLAIMED || held->type != CT_TYPE_NAT_REV)
		return CT_TAKEN;
	struct ct_key holder = held->twin;
	int closed = p->proto == IPPROTO_TCP && ct_tcp_closed(held);
	if (ct_key_equal(&holder, fwd_key)) {
		if (!closed) {
			ct_add_tcp_bits(held, ct_tcp_bits(p, 0) & (CT_TCP_FIN_FWD | CT_TCP_RST | CT_TCP_ACK_FWD));
			return CT_ADOPTED;
		}
	} else if (!closed) {
		/* Moved on: its forward half names another reply tuple, and was written after this
		 * one. A reply half newer than its forward half is a flow being made (or reopened) on
		 * another CPU right now: it writes the reply half first. */
		struct ct_value *owner = ct.lookup(&holder);
		if (!owner || owner->type != CT_TYPE_NAT_FWD || ct_key_equal(&owner->twin, rev_key) ||
		    held->created_ns >= owner->created_ns)
			return CT_TAKEN;
	}
	/* A closed flow's pair goes whole, but for this very flow's forward half: ct_commit_flow()
	 * replaces that next (a delete and an insert cost more than the one update; meanwhile it still
	 * names rev_key, as the new pair will). A moved-on flow's leftover goes alone. */
	int with_fwd = closed && !ct_key_equal(&holder, fwd_key);
	if (ct_forget(rev_key, held, &holder, closed ? CT_IF_CLOSED : CT_IF_NAMED, with_fwd) < 0 &&
	    (!wait || ct_wait_unclaimed(rev_key, ct.lookup(rev_key))))   /* another CPU forgetting it: gone yet? */
		return CT_TAKEN;
	return ct.insert(rev_key, rev) == 0 ? CT_RESERVED : CT_TAKEN;
}

/* Both halves of a new NATed flow, before its reply tuple is chosen: p is what the client sent,
 * (be_addr, be_port) the backend. The caller sets flags and SNAT fields. */
static __always_inline void ct_new_pair(const struct packet *p, const struct ct_key *fwd_key, __u32 svc_id,
					__u32 be_addr, __u16 be_port, struct ct_value *fwd, struct ct_value *rev,
					__u64 now)
{
	fwd->created_ns = rev->created_ns = now;
	fwd->last_seen_ns = rev->last_seen_ns = now;
	fwd->svc_id = rev->svc_id = svc_id;
	fwd->type = CT_TYPE_NAT_FWD;
	fwd->nat_addr = be_addr;
	fwd->nat_port = be_port;
	rev->type = CT_TYPE_NAT_REV;
	rev->nat_addr = p->daddr;
	rev->nat_port = p->dport;
	/* A connection met mid-stream (both halves lost) counts as one whose SYN was seen: the
	 * backend's next packet marks it established, or its reset ends it. */
	rev->tcp_seen = ct_tcp_bits(p, 0) | (ct_tcp_midstream(p) ? CT_TCP_SYN_FWD : 0);
	fwd->tcp_seen = rev->tcp_seen & CT_TCP_ACK_FWD;   /* mid-stream with an ACK: the handshake is done */
	rev->twin = *fwd_key;
}

static __always_inline void ct_reply_key(const struct packet *p, __u32 be_addr, __u16 be_port,
					 __u32 reply_dst, __u16 reply_port, struct ct_key *rev_key)
{
	__builtin_memset(rev_key, 0, sizeof(*rev_key));   /* padding is part of the key */
	rev_key->src_addr = be_addr;
	rev_key->dst_addr = reply_dst;
	rev_key->src_port = be_port;
	rev_key->dst_port = reply_port;
	rev_key->proto = p->proto;
}

/* The forward half, once the reply half is in (so a NAT_FWD never exists before its twin). A
 * flow replaced at fwd_key (a SYN reopening it with another reply tuple; old_rev_key: the twin
 * the old forward half named, read before anything was written) takes its old reply half along:
 * left behind, it would still translate the old backend's packets. Only a reply half that names
 * fwd_key is forgotten. */
static __always_inline int ct_commit_flow(const struct ct_key *fwd_key, const struct ct_key *rev_key,
					  struct ct_value *fwd, const struct ct_key *old_rev_key)
{
	fwd->twin = *rev_key;
	if (old_rev_key && !ct_key_equal(old_rev_key, rev_key)) {
		struct ct_value *old_rev = ct.lookup((struct ct_key *)old_rev_key);
		if (old_rev && old_rev->type == CT_TYPE_NAT_REV)
			ct_forget(old_rev_key, old_rev, fwd_key, CT_IF_NAMED, 0);
	}
	return ct.update((struct ct_key *)fwd_key, fwd);
}

/* A new flow whose reply tuple is fixed (no SNAT port to choose; old_rev: what ct_is_reopen_of()
 * found at old_rev_key): 0, or -1 when another live flow holds the tuple (the caller drops the
 * packet; the client's retry meets the same backend, lb.h, until that flow ends). */
static __always_inline int ct_create_flow(const struct packet *p, const struct ct_key *fwd_key,
					  struct ct_key *rev_key, struct ct_value *fwd, struct ct_value *rev,
					  const struct ct_key *old_rev_key, struct ct_value *old_rev)
{
	struct ct_value *held = old_rev_key && ct_key_equal(old_rev_key, rev_key) ? old_rev : NULL;
	if (ct_reserve_reply(p, rev_key, fwd_key, rev, 1, held) == CT_TAKEN)
		return -1;
	return ct_commit_flow(fwd_key, rev_key, fwd, old_rev_key);
}

/* A SYN-ACK meeting a flow that already closed answers a new connection that reuses the ports
 * (a direct one, not through the service): forget the stale pair and leave the packet alone. */
static __always_inline int ct_forget_if_stale(const struct packet *p, struct ct_key *key,
					     struct ct_value *rev)
{
	if (p->proto != IPPROTO_TCP ||
	    (p->tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) != (TCP_FL_SYN | TCP_FL_ACK) ||
	    !(rev->tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV | CT_TCP_RST)))
		return 0;
	struct ct_key twin = rev->twin;
	ct_forget(key, rev, &twin, CT_IF_ENDING, 1);   /* its twin only while that still names it */
	return 1;
}

/* The same value, last_seen aside (skip: that word's index, or -1 for none). */
static __always_inline int ct_value_equal(const struct ct_value *a, const struct ct_value *b, int skip)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
#pragma unroll
	for (int i = 0; i < sizeof(*a) / sizeof(__u64); i++)
		if (i != skip && x[i] != y[i])
			return 0;
	return 1;
}

#define CT_LAST_SEEN_WORD 1   /* struct ct_value's last_seen_ns, in __u64 words */

/* The sweep's claim of an entry it judged: swapped from the last_seen it judged, then checked to
 * still be that very entry at that key (an LRU element can be recycled under a pointer). */
static __always_inline int ct_claim_judged(struct ct_key *key, struct ct_value *entry, const struct ct_value *judged)
{
	if (__sync_val_compare_and_swap(&entry->last_seen_ns, judged->last_seen_ns, CT_CLAIMED) != judged->last_seen_ns)
		return 0;
	if (ct.lookup(key) == entry && ct_value_equal(entry, judged, CT_LAST_SEEN_WORD))
		return 1;
	entry->last_seen_ns = judged->last_seen_ns;   /* not what was judged: given back */
	return 0;
}

/* The sweep's delete of one flow it judged expired (bpf/ct_sweep.c): key and judged are one half
 * (the reply half when there is one), judged_twin the other as read (type 0: missing). Both go,
 * and only while both still hold exactly what was judged, a missing twin is still missing, and
 * both could be claimed: a flow that woke meanwhile (a packet on either half, or a SYN reusing a
 * closed flow's keys) keeps both halves. Returns the entries deleted. */
static __always_inline int ct_sweep_flow(struct ct_key *key, const struct ct_value *judged,
					 const struct ct_value *judged_twin)
{
	struct ct_value *entry = ct.lookup(key);
	if (!entry || !ct_value_equal(entry, judged, -1))
		return 0;
	struct ct_key *twin_key = (struct ct_key *)&judged->twin;   /* on the caller's stack: no copy */
	struct ct_value *twin = ct.lookup(twin_key);
	if (judged_twin->type) {
		if (!twin || !ct_value_equal(twin, judged_twin, -1))
			return 0;
	} else {
		if (twin && ct_key_equal(&twin->twin, key))
			return 0;   /* the lost half is back */
		twin = NULL;
	}
	if (!ct_claim_judged(key, entry, judged))
		return 0;
	if (twin && !ct_claim_judged(twin_key, twin, judged_twin)) {
		entry->last_seen_ns = bpf_ktime_get_ns();   /* ours to give back: the flow just woke */
		return 0;
	}
	/* The forward half first: a packet that finds only the claimed reply half meanwhile leaves
	 * it alone, one that finds only the forward half would put the reply half back. */
	int deleted = 0;
	if (twin)
		deleted += ct.delete(twin_key) == 0;
	deleted += ct.delete(key) == 0;
	return deleted;
}
