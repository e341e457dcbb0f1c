/* Address and port rewrites for XDP, where no skb helper fixes checksums: one incremental update
 * (RFC 1624, csum.h) for the addresses and one for the ports. */
#pragma once
#include "parse.h"
#include "csum.h"

/* Set the packet's addresses and ports; p says where its L4 header is. 0, or -1 (untouched). */
static __always_inline int xdp_rewrite(struct xdp_md *ctx, const struct packet *p,
				       __u32 saddr, __u16 sport, __u32 daddr, __u16 dport)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + ETH_HLEN_;
	__u32 l4_off = p->l4_off;

	if ((void *)(iph + 1) > data_end || l4_off > ETH_HLEN_ + 60)
		return -1;
	__u16 *ports = data + l4_off;
	__u16 *l4_check;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		l4_check = &tcp->check;
	} else {
		struct udphdr *udp = data + l4_off;
		if ((void *)(udp + 1) > data_end)
			return -1;
		l4_check = &udp->check;
	}

	__u32 addr_diff = csum_fold32(csum_word_diff(iph->saddr, saddr) + csum_word_diff(iph->daddr, daddr));
	__u32 port_diff = csum_fold32(csum_word_diff(ports[0] | (__u32)ports[1] << 16, sport | (__u32)dport << 16));

	iph->check = csum_apply(iph->check, addr_diff);
	if (p->proto == IPPROTO_TCP || *l4_check) {   /* a UDP checksum of 0 means none: keep it */
		__u16 check = csum_apply(csum_apply(*l4_check, addr_diff), port_diff);
		*l4_check = (p->proto == IPPROTO_UDP && !check) ? 0xffff : check;
	}
	iph->saddr = saddr;
	iph->daddr = daddr;
	ports[0] = sport;
	ports[1] = dport;
	return 0;
}
