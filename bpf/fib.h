/* Forward a translated packet by a FIB lookup and a redirect, without the routing stack's input
 * path: a packet SNATed to the node's own address would be dropped there as a martian source. */
#pragma once
#include "parse.h"
#include "drops.h"
#include "csum.h"
#include "nat.h"
#include "icmp_reject.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* bcc 0.26 declares this helper with three arguments; the kernel's takes four. */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* What the stack's forwarding (ip_forward()) does that a redirect past it must do itself:
 *  - TTL: a packet arriving with TTL 1 (or 0) goes no further and its sender gets time exceeded;
 *    the others leave with the TTL one lower (and the IP checksum to match);
 *  - MTU: the FIB lookup is given no tot_len, so the kernel checks the skb against the egress
 *    device's MTU (and says what it is); given a tot_len it would check one 64 KB GRO or TSO
 *    super-packet as one packet and refuse it (a 2 MB echo stalled). The kernel passes every GSO
 *    skb there (is_skb_forwardable()), so a GSO skb is checked here by its segments: headers plus
 *    gso_size, as the stack's ip_exceeds_mtu() does. One really too big gets frag-needed with the
 *    egress MTU when it says DF (path MTU discovery, as the stack answers); without DF the stack
 *    would fragment it, but its input path would call our own SNAT source a martian, so it is
 *    dropped and counted (frag-needed).
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

static __always_inline int fib_lookup_skb(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u8 proto,
					  struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = proto;
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	fib->ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/* Send the (translated) packet where the lookup said, its TTL one lower. */
static __always_inline int fib_send(struct __sk_buff *skb, int rc, const struct bpf_fib_lookup *fib)
{
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return drop_skb(skb, DROP_FRAG_NEEDED);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return drop_skb(skb, DROP_NO_ROUTE);   /* nothing we could deliver */
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + ETH_HLEN_;
	if ((void *)(iph + 1) > data_end)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	if (iph->ttl <= 1)
		return drop_skb(skb, DROP_TTL_EXCEEDED);   /* callers that may answer have done so */
	__u16 *ttl_proto = (__u16 *)&iph->ttl, before = *ttl_proto;
	iph->ttl--;
	iph->check = csum_apply(iph->check, csum_word_diff(before, *ttl_proto));
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return redirect_neigh(fib->ifindex, NULL, 0, 0);   /* the kernel resolves it */
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	return bpf_redirect(fib->ifindex, 0);
}

/* A packet already translated (an ICMP error about a flow, a later fragment): no ICMP answer is
 * owed for it (none about an ICMP error, none about a later fragment: RFC 1812 4.3.2.7). */
static __always_inline int redirect_by_fib(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u8 proto)
{
	struct bpf_fib_lookup *fib = fib_params();

	if (!fib)
		return drop_skb(skb, DROP_NO_ROUTE);
	return fib_send(skb, fib_lookup_skb(skb, saddr, daddr, proto, fib), fib);
}

/* The length of each IP packet a GSO skb is cut into: IP header, L4 header, gso_size. */
static __always_inline __u32 gso_network_seglen(struct __sk_buff *skb, const struct packet *p)
{
	__u32 l4_hdr = 0;
	__u8 doff = 0;

	if (p->proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, p->l4_off + 12, &doff, 1) == 0)
		l4_hdr = (doff >> 4) * 4;
	else if (p->proto == IPPROTO_UDP)
		l4_hdr = sizeof(struct udphdr);
	return p->l4_off - ETH_HLEN_ + l4_hdr + skb->gso_size;
}

/* A flow packet SNATed from the uplink: checked as the stack's forwarding would check it (TTL,
 * MTU: answered), then translated to (saddr, sport) -> (daddr, dport) and sent on. */
static __always_inline int forward_by_fib(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u16 sport,
					  __u32 daddr, __u16 dport)
{
	struct bpf_fib_lookup *fib = fib_params();

	if (!fib)
		return drop_skb(skb, DROP_NO_ROUTE);
	/* One answer site, its type chosen: each inlined copy of reject_icmp() costs the verifier. */
	__u32 answer = 0;   /* type << 24 | code << 16 | next-hop MTU */
	int rc = BPF_FIB_LKUP_RET_SUCCESS;
	if (p->ttl <= 1) {
		answer = ICMP_TIME_EXCEEDED_ << 24 | ICMP_EXC_TTL_ << 16;
	} else {
		rc = fib_lookup_skb(skb, saddr, daddr, p->proto, fib);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS && skb->gso_size && gso_network_seglen(skb, p) > fib->mtu_result)
			rc = BPF_FIB_LKUP_RET_FRAG_NEEDED;
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED && (p->ip_flags & IP_DF_BE))
			answer = ICMP_DEST_UNREACH_ << 24 | ICMP_FRAG_NEEDED_ << 16 | fib->mtu_result;
	}
	if (answer)
		return reject_icmp(skb, p, answer >> 24, answer >> 16, answer,
				   p->ttl <= 1 ? DROP_TTL_EXCEEDED : DROP_FRAG_NEEDED);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (nat_rewrite(skb, p, saddr, sport, daddr, dport) < 0)
			return drop_skb(skb, DROP_REWRITE_FAILED);
	}
	return fib_send(skb, rc, fib);
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
