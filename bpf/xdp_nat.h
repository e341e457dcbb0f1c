/* Address and port rewrites for XDP, where no skb helper fixes checksums: one incremental update
 * (RFC 1624, through bpf_csum_diff) for the addresses and one for the ports. */
#pragma once
#include "parse.h"

static __always_inline __u16 csum_apply(__u16 check, __s64 diff)
{
	__u64 sum = (__u16)~check + (__u64)(__u32)diff;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

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

	__u32 old_addrs[2] = { iph->saddr, iph->daddr }, new_addrs[2] = { saddr, daddr };
	__u16 old_ports[2] = { ports[0], ports[1] }, new_ports[2] = { sport, dport };
	__s64 addr_diff = bpf_csum_diff(old_addrs, sizeof(old_addrs), new_addrs, sizeof(new_addrs), 0);
	__s64 port_diff = bpf_csum_diff((__be32 *)old_ports, sizeof(old_ports), (__be32 *)new_ports,
					sizeof(new_ports), 0);
	if (addr_diff < 0 || port_diff < 0)
		return -1;

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
