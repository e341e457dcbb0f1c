/* Address and port rewrites with incremental IP and L4 checksum fixes. Each returns < 0 when a
 * helper failed; the caller drops the packet rather than send it half rewritten. */
#pragma once
#include "parse.h"

#define IP_SRC_OFF (ETH_HLEN_ + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN_ + offsetof(struct iphdr, daddr))
#define IP_CSUM_OFF (ETH_HLEN_ + offsetof(struct iphdr, check))

static __always_inline int nat_set_addr(struct __sk_buff *skb, const struct packet *p,
					__u32 field_off, __u32 old_addr, __u32 new_addr)
{
	if (old_addr == new_addr)
		return 0;
	if (p->l4_csum_off &&
	    bpf_l4_csum_replace(skb, p->l4_csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | p->l4_csum_flags | sizeof(new_addr)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, field_off, &new_addr, sizeof(new_addr), 0);
}

/* Source port sits at offset 0 of both TCP and UDP headers, destination port at 2. */
static __always_inline int nat_set_port(struct __sk_buff *skb, const struct packet *p,
					__u32 field_off, __u16 old_port, __u16 new_port)
{
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, p->l4_csum_off, old_port, new_port,
				p->l4_csum_flags | sizeof(new_port)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, field_off, &new_port, sizeof(new_port), 0);
}

static __always_inline int nat_set_dst(struct __sk_buff *skb, const struct packet *p,
				       __u32 addr, __u16 port)
{
	if (nat_set_addr(skb, p, IP_DST_OFF, p->daddr, addr) < 0)
		return -1;
	return nat_set_port(skb, p, p->l4_off + 2, p->dport, port);
}

static __always_inline int nat_set_src(struct __sk_buff *skb, const struct packet *p,
				       __u32 addr, __u16 port)
{
	if (nat_set_addr(skb, p, IP_SRC_OFF, p->saddr, addr) < 0)
		return -1;
	return nat_set_port(skb, p, p->l4_off, p->sport, port);
}

/* Send the packet back out of the interface it came in on, towards the pod: swap the MACs. */
static __always_inline int redirect_back(struct __sk_buff *skb)
{
	__u8 macs[12], swapped[12];

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}
