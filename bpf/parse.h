/* Packet parsing: what the later stages need to know, read once. */
#pragma once
#include "consts.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* SCTP's common header (RFC 9260 3.1): ports, verification tag, CRC32c (little-endian). */
struct sctp_common {
	__u16 source;
	__u16 dest;
	__u32 vtag;
	__u32 checksum;
};

/* Before reading skb->data/data_end where several inlined paths do: the compiler may otherwise keep
 * &skb->data_end in a register shared by them, and the verifier refuses a load through a ctx
 * pointer moved off the context ("dereference of modified ctx ptr"). */
#define CTX_FRESH(ctx) asm volatile("" : "+r"(ctx))

/* x &= mask where the verifier sees it: after a bounds check the compiler may use another copy of
 * x for the pointer, whose bounds the verifier never learnt. mask: 2^n - 1 above every valid x. */
#define VERIFIER_MASK(x, mask) asm volatile("%0 &= " #mask : "+r"(x))

enum parse_result {
	PARSE_OK,
	PARSE_NOT_IPV4,   /* not ours: pass */
	PARSE_MALFORMED,  /* truncated or inconsistent headers */
	PARSE_FRAGMENT,   /* IPv4 fragment without an L4 header to match a flow on (a later one,
			   * or any of SCTP's, whose CRC spans them all): frag.h */
};

/* packet.frag: a first fragment parses as PARSE_OK (its L4 header is there) and is translated like
 * any packet; frag.h remembers it for the later ones. */
enum packet_frag {
	FRAG_NONE,
	FRAG_FIRST,   /* MF set, offset 0 */
	FRAG_LATER,   /* offset > 0 */
};

struct packet {
	__u32 l4_off;       /* ETH_HLEN + IP header length (options included) */
	__u32 l4_csum_off;  /* 0: no L4 checksum to fix */
	__u32 l4_csum_flags;/* BPF_F_MARK_MANGLED_0 for UDP: a zero checksum stays zero */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 pad;
	__u16 l4_len;       /* the IP packet's bytes after its header (SCTP's CRC covers them) */
	__u16 ip_id;        /* be (frag.h's key) */
	__u8 frag;          /* enum packet_frag */
	__u8 ip_flags;      /* the DF bit (IP_DF_BE), for fib.h */
	__u8 ttl;           /* for fib.h, which forwards past the stack's TTL check */
	__u8 pad3;
};

/* The headers between data and data_end; len is the packet's whole length (tc: skb->len). */
static __always_inline enum parse_result parse_headers(void *data, void *data_end, __u32 len,
						       struct packet *p)
{
	struct ethhdr *eth = data;
	struct iphdr *iph = data + ETH_HLEN_;

	if ((void *)(iph + 1) > data_end)
		return (void *)(eth + 1) <= data_end && eth->h_proto != ETH_P_IP_BE ?
			PARSE_NOT_IPV4 : PARSE_MALFORMED;
	if (eth->h_proto != ETH_P_IP_BE)
		return PARSE_NOT_IPV4;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_MALFORMED;

	__u32 ip_len = iph->ihl * 4;
	__u16 tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len < ip_len || ETH_HLEN_ + tot_len > len)
		return PARSE_MALFORMED;

	p->saddr = iph->saddr;
	p->daddr = iph->daddr;
	p->proto = iph->protocol;
	p->l4_off = ETH_HLEN_ + ip_len;
	p->l4_csum_off = 0;
	p->l4_csum_flags = 0;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->l4_len = tot_len - ip_len;
	p->ip_id = iph->id;
	p->frag = FRAG_NONE;
	p->ip_flags = iph->frag_off & IP_DF_BE;
	p->ttl = iph->ttl;
	p->pad3 = 0;
	if (iph->frag_off & IP_MF_OFFSET_MASK) {
		p->frag = (iph->frag_off & IP_OFFSET_MASK_BE) ? FRAG_LATER : FRAG_FIRST;
		if (p->frag == FRAG_LATER || p->proto == IPPROTO_SCTP)
			return PARSE_FRAGMENT;
		/* a first fragment: its L4 header is parsed as a whole packet's */
	}

	void *l4 = data + p->l4_off;
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end || ip_len + sizeof(*tcp) > tot_len)
			return PARSE_MALFORMED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
		p->l4_csum_off = p->l4_off + offsetof(struct tcphdr, check);
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end || ip_len + sizeof(*udp) > tot_len)
			return PARSE_MALFORMED;
		p->sport = udp->source;
		p->dport = udp->dest;
		p->l4_csum_off = p->l4_off + offsetof(struct udphdr, check);
		p->l4_csum_flags = BPF_F_MARK_MANGLED_0;
		break;
	}
	case IPPROTO_SCTP: {
		struct sctp_common *sctp = l4;
		if ((void *)(sctp + 1) > data_end || ip_len + sizeof(*sctp) > tot_len)
			return PARSE_MALFORMED;
		p->sport = sctp->source;
		p->dport = sctp->dest;
		break;   /* no inet checksum: l4_csum_off stays 0 (sctp.h) */
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;
		if ((void *)(icmp + 1) > data_end || ip_len + sizeof(*icmp) > tot_len)
			return PARSE_MALFORMED;
		p->icmp_type = icmp->type;
		break;
	}
	}
	return PARSE_OK;
}

static __always_inline enum parse_result parse_packet(struct __sk_buff *skb, struct packet *p)
{
	return parse_headers((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, p);
}

static __always_inline enum parse_result parse_xdp(struct xdp_md *ctx, struct packet *p)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	return parse_headers(data, data_end, data_end - data, p);
}

static __always_inline int is_l4_with_ports(const struct packet *p)
{
	return p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP;
}
