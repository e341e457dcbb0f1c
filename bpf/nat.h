/* Address and port rewrites, written straight into the packet with incremental checksum fixes
 * (RFC 1624, csum.h); tc and XDP share them.
 *
 * The L4 checksum field holds one of two things:
 *   the whole checksum   XDP frames, and skbs in CHECKSUM_NONE or UNNECESSARY: the addresses
 *                        (through the pseudo-header) and the ports both change it;
 *   the pseudo-header    CHECKSUM_PARTIAL skbs (a pod's traffic on a veth): the stack or the NIC
 *   sum only             completes it over the L4 bytes later, so only the addresses change it.
 * A CHECKSUM_COMPLETE skb also carries the sum of its bytes in skb->csum, which must follow the
 * field's change: that case, and a kernel whose skb state cannot be read (kernel.h), is left to
 * bpf_l4_csum_replace(), which knows how. Everything else takes plain instructions: a helper call
 * costs ~25-30 ns on this class of machine, a direct write ~1 ns.
 *
 * SCTP has no inet checksum but a CRC32c that only its ports change (sctp.h), in the field's
 * WHOLE case; a CHECKSUM_COMPLETE skb's sum is told of the bytes that changed (bpf_csum_update).
 *
 * Return < 0 when the headers are not where parse_packet() found them or a helper failed: the
 * caller drops the packet rather than send it half rewritten. */
#pragma once
#include "parse.h"
#include "csum.h"
#include "kernel.h"
#include "drops.h"
#include "sctp.h"

enum l4_csum_fix {
	L4_CSUM_WHOLE,        /* the field is the whole checksum */
	L4_CSUM_PSEUDO_ONLY,  /* the field is the pseudo-header sum (CHECKSUM_PARTIAL) */
	L4_CSUM_DONE,         /* the helpers have fixed it already */
};

static __always_inline __u32 nat_addr_diff(const struct packet *p, __u32 saddr, __u32 daddr)
{
	return csum_fold32(csum_word_diff(p->saddr, saddr) + csum_word_diff(p->daddr, daddr));
}

/* The tuple as one 32-bit word per pair, as it lies in the packet. */
static __always_inline __u32 nat_ports(__u16 sport, __u16 dport)
{
	return sport | (__u32)dport << 16;
}

/* Set the packet's addresses and ports (data..data_end: the frame from its Ethernet header). */
static __always_inline int rewrite_tuple(void *data, void *data_end, const struct packet *p,
					 __u32 saddr, __u16 sport, __u32 daddr, __u16 dport,
					 enum l4_csum_fix fix)
{
	struct iphdr *iph = data + ETH_HLEN_;
	__u32 l4_off = p->l4_off;
	__u16 *l4_check = 0;
	__u32 old_ports = nat_ports(p->sport, p->dport), new_ports = nat_ports(sport, dport);

	if ((void *)(iph + 1) > data_end || l4_off > ETH_HLEN_ + 60)
		return -1;
	__u16 *ports = data + l4_off;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		l4_check = &tcp->check;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *udp = data + l4_off;
		if ((void *)(udp + 1) > data_end)
			return -1;
		l4_check = &udp->check;
	} else if (p->proto == IPPROTO_SCTP) {
		struct sctp_common *sctp = data + l4_off;
		if ((void *)(sctp + 1) > data_end)
			return -1;   /* its CRC is sctp_fix_crc()'s */
	} else {
		return -1;
	}

	__u32 addr_diff = nat_addr_diff(p, saddr, daddr);
	/* A UDP checksum of 0 means none: it stays 0, and a computed 0 is sent as 0xffff. */
	if (l4_check && fix != L4_CSUM_DONE && (p->proto == IPPROTO_TCP || *l4_check)) {
		__u16 check;
		if (fix == L4_CSUM_PSEUDO_ONLY)
			check = csum_sum_apply(*l4_check, addr_diff);
		else
			check = csum_apply(csum_apply(*l4_check, addr_diff),
					   csum_fold32(csum_word_diff(old_ports, new_ports)));
		*l4_check = (p->proto == IPPROTO_UDP && !check) ? 0xffff : check;
	}
	iph->check = csum_apply(iph->check, addr_diff);
	iph->saddr = saddr;
	iph->daddr = daddr;
	ports[0] = sport;
	ports[1] = dport;
	return 0;
}

/* The L4 checksum of a CHECKSUM_COMPLETE skb (or of one whose state is unknown), by the kernel's
 * helpers: one call for the addresses (pseudo-header), one for the ports. */
static __always_inline int l4_csum_by_helpers(struct __sk_buff *skb, const struct packet *p, __u32 addr_diff,
					      __u32 old_ports, __u32 new_ports)
{
	if (addr_diff &&
	    bpf_l4_csum_replace(skb, p->l4_csum_off, 0, addr_diff, BPF_F_PSEUDO_HDR | p->l4_csum_flags) < 0)
		return -1;
	if (new_ports != old_ports &&
	    bpf_l4_csum_replace(skb, p->l4_csum_off, old_ports, new_ports, p->l4_csum_flags | sizeof(new_ports)) < 0)
		return -1;
	return 0;
}

/* What XORing `change` into the CRC word did to the ones' complement sum of the packet's bytes. */
static __always_inline __u32 sctp_crc_sum_diff(struct __sk_buff *skb, const struct packet *p, __u32 change)
{
	__u32 now;

	if (!change || bpf_skb_load_bytes(skb, p->l4_off + SCTP_CSUM_OFF, &now, sizeof(now)) < 0)
		return 0;
	return csum_fold32(csum_word_diff(now ^ change, now));
}

/* tc, SCTP: the CRC follows the ports unless the stack computes it later (CHECKSUM_PARTIAL, GSO); a
 * CHECKSUM_COMPLETE sum follows the bytes that changed (the IP header's own change sums to zero).
 * Without the skb's state (kernel.h) every skb counts as COMPLETE: bpf_csum_update() does nothing
 * to another, and a CRC the stack has yet to compute is 0. */
static __always_inline int sctp_nat_rewrite(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u16 sport,
					    __u32 daddr, __u16 dport, __u32 old_ports, __u32 new_ports)
{
	int state = skb_csum_state(skb);
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	__u32 change = 0;

	if (rewrite_tuple(data, data_end, p, saddr, sport, daddr, dport, L4_CSUM_DONE) < 0)
		return -1;
	if (state != SKB_CSUM_PARTIAL && !skb->gso_size &&
	    sctp_fix_crc(data, data_end, p, old_ports ^ new_ports, &change) < 0)
		return -1;
	if (state == SKB_CSUM_COMPLETE)
		/* the CRC word went from c to c ^ change: the sum of the bytes by (c ^ change) - c, with c
		 * read back; bpf_csum_update() refuses any other skb, so a kernel without the state is fine */
		bpf_csum_update(skb, csum_fold32(csum_word_diff(old_ports, new_ports) + sctp_crc_sum_diff(skb, p, change)));
	return 0;
}

/* tc: set the skb's tuple, the L4 checksum fixed as its state asks. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct packet *p,
				       __u32 saddr, __u16 sport, __u32 daddr, __u16 dport)
{
	__u32 old_ports = nat_ports(p->sport, p->dport), new_ports = nat_ports(sport, dport);
	enum l4_csum_fix fix = L4_CSUM_WHOLE;

	if (saddr == p->saddr && daddr == p->daddr && new_ports == old_ports)
		return 0;
	if (p->proto == IPPROTO_SCTP)
		return sctp_nat_rewrite(skb, p, saddr, sport, daddr, dport, old_ports, new_ports);
	switch (skb_csum_state(skb)) {
	case SKB_CSUM_PARTIAL:
		fix = L4_CSUM_PSEUDO_ONLY;
		break;
	case SKB_CSUM_COMPLETE:
		if (l4_csum_by_helpers(skb, p, nat_addr_diff(p, saddr, daddr), old_ports, new_ports) < 0)
			return -1;
		fix = L4_CSUM_DONE;
		break;
	}
	/* After a helper call the packet pointers must be taken again: here, not before. */
	CTX_FRESH(skb);
	return rewrite_tuple((void *)(long)skb->data, (void *)(long)skb->data_end, p, saddr, sport, daddr, dport, fix);
}

/* tc: the addresses and the IP checksum only, for a later fragment (it carries no L4 header). By
 * the helpers: rare enough not to matter, and no packet pointers to keep valid across the inlined
 * paths. */
static __always_inline int rewrite_addrs(struct __sk_buff *skb, const struct packet *p, __u32 saddr, __u32 daddr)
{
	__u32 addrs[2] = { saddr, daddr };

	if (bpf_l3_csum_replace(skb, ETH_HLEN_ + offsetof(struct iphdr, check), 0, nat_addr_diff(p, saddr, daddr), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN_ + offsetof(struct iphdr, saddr), addrs, sizeof(addrs), 0);
}

/* tc: p's translation, whether or not it carries its L4 header (a later fragment: addresses only). */
static __always_inline int nat_rewrite_any(struct __sk_buff *skb, const struct packet *p,
					   __u32 saddr, __u16 sport, __u32 daddr, __u16 dport)
{
	if (p->frag == FRAG_LATER)
		return rewrite_addrs(skb, p, saddr, daddr);
	return nat_rewrite(skb, p, saddr, sport, daddr, dport);
}

/* A frame whose L4 checksum field holds only its pseudo-header sum is a CHECKSUM_PARTIAL skb's,
 * its checksum left to offload: a veth uplink carries what its peer's stack sends that way (a
 * NIC's wire never does). XDP cannot see the skb's state and would fix the field as a whole
 * checksum, which the receiver then refuses: such a frame is tc's, which knows. (A whole checksum
 * equal to the pseudo-header sum, 1 in 65536, only takes the slower path too.) */
static __always_inline int xdp_csum_partial(struct xdp_md *ctx, const struct packet *p)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + ETH_HLEN_;
	__u32 off = p->l4_csum_off;

	if ((void *)(iph + 1) > data_end || off < ETH_HLEN_ + 20 || off > ETH_HLEN_ + 60 + 16)
		return 0;
	__u16 *check = data + off;
	if ((void *)(check + 1) > data_end)
		return 0;
	__u32 l4_len = bpf_ntohs(iph->tot_len) - (p->l4_off - ETH_HLEN_);
	/* The pseudo-header's words as they lie in the packet, like the field itself (csum.h). */
	__u64 sum = (iph->saddr & 0xffff) + (iph->saddr >> 16) + (iph->daddr & 0xffff) + (iph->daddr >> 16) +
		    bpf_htons((__u16)p->proto) + bpf_htons((__u16)l4_len);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return *check == (__u16)sum;
}

/* XDP: frames carry whole checksums (no skb, no offload state; xdp_csum_partial() keeps the others
 * out). */
static __always_inline int xdp_rewrite(struct xdp_md *ctx, const struct packet *p,
				       __u32 saddr, __u16 sport, __u32 daddr, __u16 dport)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u32 change;

	if (rewrite_tuple(data, data_end, p, saddr, sport, daddr, dport, L4_CSUM_WHOLE) < 0)
		return -1;
	return p->proto == IPPROTO_SCTP ?
		sctp_fix_crc(data, data_end, p, nat_ports(p->sport, p->dport) ^ nat_ports(sport, dport), &change) : 0;
}

/* Send the packet back out of the interface it came in on, towards the pod: swap the MACs. */
static __always_inline int redirect_back(struct __sk_buff *skb)
{
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return bpf_redirect(skb->ifindex, 0);
}
