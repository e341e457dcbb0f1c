/* Forward a translated packet by a FIB lookup and a redirect, without the routing stack's input
 * path: a packet SNATed to the node's own address would be dropped there as a martian source. */
#pragma once
#include "parse.h"
#include "drops.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* bcc 0.26 declares this helper with three arguments; the kernel's takes four. */
static long (*redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* No tot_len: the kernel then checks the skb against the egress device's MTU as forwarding does,
 * GSO-aware (is_skb_forwardable()). With a tot_len it checks one packet of that size against the
 * route's MTU, and a GRO-merged or TSO super-packet (a NIC's GRO hands the uplink 64 KB ones)
 * would be refused. A packet really too big for the egress is dropped and counted (frag-needed);
 * the stack's input path cannot take it instead: it would call our own source a martian. */
static __always_inline int redirect_by_fib(struct __sk_buff *skb, __u32 saddr, __u32 daddr, __u8 proto)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = proto,
		.ipv4_src = saddr,
		.ipv4_dst = daddr,
		.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex,
	};
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return drop_skb(skb, DROP_REWRITE_FAILED);
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return redirect_neigh(fib.ifindex, NULL, 0, 0);   /* the kernel resolves it */
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return drop_skb(skb, DROP_FRAG_NEEDED);
	return drop_skb(skb, DROP_NO_ROUTE);   /* nothing we could deliver */
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
