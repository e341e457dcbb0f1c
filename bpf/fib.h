/* Forward a translated packet by a FIB lookup and a redirect, without the routing stack's input
 * path: a packet SNATed to the node's own address would be dropped there as a martian source. */
#pragma once
#include "parse.h"
#include "drops.h"
#include "csum.h"
#include "nat.h"
#include "ct_target.h"
#include "icmp_reject.h"
#include "forward.h"
#include "frag.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* bcc 0.26 declares this helper with three arguments; the kernel's takes four. */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* What the stack's forwarding (ip_forward()) checks that a redirect past it must check itself:
 *  - TTL (forward.h): a packet arriving with TTL 1 (or 0) gets time exceeded, the others leave one
 *    hop older;
 *  - MTU: the FIB lookup is given the length of the IP packets the skb will leave as, and checks
 *    it against the way out's MTU (the device's, a locked route MTU or one learnt from a
 *    frag-needed: ip_mtu_from_fib_result()), and says what it is. For a GSO skb that is one
 *    segment's length, headers plus gso_size, as the stack's ip_exceeds_mtu() checks: its whole
 *    length would refuse every 64 KB GRO or TSO super-packet (a 2 MB echo stalled); not given any,
 *    the kernel checks the frame (trailing bytes included) against the device's MTU alone. One
 *    really too big gets frag-needed with that MTU when it says DF (path MTU discovery, as the
 *    stack answers); without DF it goes to the stack, which fragments it (forward_by_fib()).
 * Both answers quote the packet as its sender sent it (checked before the rewrite) and go back out
 * of the interface it came in on. */
/* The lookup's 64 bytes off the stack (512 bytes for the whole program, each inlined caller
 * taking its own): one per CPU, a program run is not interrupted by another on its CPU. */
BPF_PERCPU_ARRAY(fib_scratch, struct bpf_fib_lookup, 1);

static __always_inline struct bpf_fib_lookup *fib_params(void)
{
	__u32 zero = 0;
	return fib_scratch.lookup(&zero);
}

/* The length of each IP packet p leaves as: a GSO skb's segments (IP header, L4 header, gso_size),
 * else p's own total length. */
static __always_inline __u32 ip_len_out(struct __sk_buff *skb, const struct packet *p)
{
	__u32 l4_hdr = 0;
	__u8 doff = 0;

	if (!skb->gso_size)
		return p->l4_off - ETH_HLEN_ + p->l4_len;
	if (p->proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) == 0)
		l4_hdr = (doff >> 4) * 4;
	else if (p->proto == IPPROTO_UDP)
		l4_hdr = sizeof(struct udphdr);
	return p->l4_off - ETH_HLEN_ + l4_hdr + skb->gso_size;
}

/* rc: BPF_FIB_LKUP_RET_*; FRAG_NEEDED when p is too big for the way out, fib->mtu_result its MTU. */
static __always_inline int fib_lookup_skb(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u32 daddr,
					  struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = p->proto;
	fib->tot_len = ip_len_out(skb, p);
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	fib->ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* Send the translated packet where the lookup said (rc: its result, success or no neighbour). */
static __always_inline int fib_send(struct __sk_buff *skb, int rc, const struct bpf_fib_lookup *fib)
{
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return redirect_neigh(fib->ifindex, NULL, 0, 0);   /* the kernel resolves it */
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return bpf_redirect(fib->ifindex, 0);
}

/* An ICMP error already translated: no ICMP answer is owed for it (none about an ICMP error), and
 * one too big (Linux sends <= 576 bytes) goes no further. p: as parsed, before the rewrite. */
static __always_inline int redirect_by_fib(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u32 daddr)
{
	struct bpf_fib_lookup *fib = fib_params();

	if (!fib)
		return drop_skb(skb, DROP_NO_ROUTE);
	int rc = fib_lookup_skb(skb, p, saddr, daddr, fib);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return drop_skb(skb, DROP_FRAG_NEEDED);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop_skb(skb, DROP_NO_ROUTE);
	int verdict = forward_hop(skb, p, 0, 0);
	return verdict != TC_ACT_NEXT ? verdict : fib_send(skb, rc, fib);
}

/* A flow's packet SNATed from the uplink, or a later fragment of one (later_fragment, a constant at
 * each call site: its addresses only, and no ICMP error about it): checked as the stack's
 * forwarding would check it (TTL, MTU: answered, forward.h), translated as t says and sent on by
 * FIB.
 *
 * Too big for the way out, and its sender lets it be fragmented (no DF): the stack's forwarding
 * fragments it, as any packet it forwards. Its input path calls a packet from our own (SNAT)
 * address a martian, so it gets p with only the destination translated (from the client, or the
 * backend, as it came: neither is ours); it routes it, checks and decrements the TTL and cuts it,
 * and to_uplink puts t's source on every fragment as it leaves (frag.h: by source, destination,
 * IP id and protocol, which the fragments keep). A GSO skb is not handed up: the stack cuts it into
 * segments first, each with an IP id of its own (TCP without DF, or UDP GRO on forwarding: rare);
 * nor SCTP, whose CRC spans the datagram (and which sets DF). Those are dropped and counted.
 * One rewrite site for both ways out: each inlined copy costs the verifier (and so does a rewrite
 * that chooses at run time between a fragment's and a whole packet's: 100k instructions). */
static __always_inline int forward_by_fib(struct __sk_buff *skb, const struct packet *p, const struct nat_target *t,
					  int later_fragment)
{
	struct bpf_fib_lookup *fib = fib_params();

	if (!fib)
		return drop_skb(skb, DROP_NO_ROUTE);
	__u32 answer = 0;   /* type << 24 | code << 16 | next-hop MTU */
	int rc = BPF_FIB_LKUP_RET_SUCCESS, to_stack = 0;
	if (p->ttl > 1) {   /* else time exceeded (forward_hop()), as ip_forward() checks the TTL first */
		rc = fib_lookup_skb(skb, p, t->saddr, t->daddr, fib);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && !(p->ip_flags & IP_DF_BE)) {
			if (skb->gso_size || p->proto == IPPROTO_SCTP)
				return drop_skb(skb, DROP_FRAG_NEEDED);
			frag_snat_remember(p, t->daddr, t->saddr, t->sport);
			to_stack = 1;
		} else if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
			answer = ICMP_DEST_UNREACH_ << 24 | ICMP_FRAG_NEEDED_ << 16 | fib->mtu_result;
		} else if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
			return drop_skb(skb, DROP_NO_ROUTE);   /* nothing we could deliver */
		}
	}
	if (!to_stack) {
		int verdict = forward_hop(skb, p, answer, !later_fragment);
		if (verdict != TC_ACT_NEXT)
			return verdict;
	}
	__u32 saddr = to_stack ? p->saddr : t->saddr;
	int err = later_fragment ? rewrite_addrs(skb, p, saddr, t->daddr) :
				   nat_rewrite(skb, p, saddr, to_stack ? p->sport : t->sport, t->daddr, t->dport);
	if (err < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	return to_stack ? TC_ACT_NEXT : fib_send(skb, rc, fib);
}

/* XDP: where the translated packet goes next. 0 with *ifindex and MACs set, or -1 when XDP
 * cannot finish it (no route, neighbour not resolved yet, too big): then tc gets it, untouched.
 * An XDP frame is one packet (no GSO), so its own length is what the MTU check must see. */
static __always_inline int fib_next_hop(struct xdp_md *ctx, __u32 saddr, __u32 daddr, __u8 proto,
					__u32 *ifindex, __u8 *macs)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = proto,
		.tot_len = data_end - data - ETH_HLEN_,
		.ipv4_src = saddr,
		.ipv4_dst = daddr,
		.ifindex = ctx->ingress_ifindex,
	};
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	__builtin_memcpy(macs, fib.dmac, 6);
	__builtin_memcpy(macs + 6, fib.smac, 6);
	*ifindex = fib.ifindex;
	return 0;
}
