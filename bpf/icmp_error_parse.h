/* An ICMP error (destination unreachable, any code; time exceeded; parameter problem) and the
 * packet it quotes: that packet's IP header (options included) and at least the first 8 bytes of
 * its L4 header (RFC 792; Linux quotes up to 576 bytes in all). The quote names the flow the
 * error is about, so it is what conntrack is asked (icmp_error.h).
 *
 * Everything is bounds-checked against the frame and against the outer IP packet's length: a
 * quote that is truncated or does not add up is ICMP_QUOTE_MALFORMED, and the caller passes the
 * error untouched (never a partial rewrite). */
#pragma once
#include "parse.h"

#define ICMP_PARAMETER_PROB_ 12
#define ICMP_HDR_LEN 8
/* Where the frame's quoted L4 header may start at the latest: Ethernet, outer IP with options,
 * ICMP header, quoted IP with options. Offsets are masked to this for the verifier. */
#define ICMP_QUOTE_L4_MAX (ETH_HLEN_ + 60 + ICMP_HDR_LEN + 60)

enum icmp_quote_result {
	ICMP_NOT_ERROR,        /* not an error this file parses (echo, or another type) */
	ICMP_QUOTE_OK,
	ICMP_QUOTE_NOT_OURS,   /* about a protocol without ports, or about a later fragment */
	ICMP_QUOTE_MALFORMED,  /* truncated, or inconsistent headers */
};

/* The quoted packet: offsets from the frame's start, tuple as the quoted packet carried it. */
struct icmp_quote {
	__u32 ip_off;        /* the quoted IP header */
	__u32 l4_off;        /* the quoted L4 header */
	__u32 l4_csum_off;   /* the quoted inet checksum field, 0 when the quote ends before it (or SCTP) */
	__u32 saddr;         /* be */
	__u32 daddr;         /* be */
	__u16 sport;         /* be */
	__u16 dport;         /* be */
	__u8 proto;
	__u8 pad[3];
};

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH_ || type == ICMP_TIME_EXCEEDED_ || type == ICMP_PARAMETER_PROB_;
}

/* p: the outer packet as parse_headers() read it (PARSE_OK, proto ICMP); data..data_end: the frame
 * (tc: after bpf_skb_pull_data(), so the quote is linear). */
static __always_inline enum icmp_quote_result icmp_parse_quote(void *data, void *data_end, const struct packet *p,
							       struct icmp_quote *q)
{
	if (p->proto != IPPROTO_ICMP || !icmp_is_error(p->icmp_type))
		return ICMP_NOT_ERROR;

	/* The outer packet ends here; a frame may carry padding beyond it. */
	__u32 end = p->l4_off + p->l4_len;
	__u32 ip_off = p->l4_off + ICMP_HDR_LEN;
	if (ip_off > ETH_HLEN_ + 60 + ICMP_HDR_LEN)
		return ICMP_QUOTE_MALFORMED;
	VERIFIER_MASK(ip_off, 0x7f);
	struct iphdr *iph = data + ip_off;
	if ((void *)(iph + 1) > data_end || ip_off + sizeof(*iph) > end)
		return ICMP_QUOTE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return ICMP_QUOTE_MALFORMED;
	__u32 ip_len = iph->ihl * 4;
	if (bpf_ntohs(iph->tot_len) < ip_len + 8)
		return ICMP_QUOTE_MALFORMED;   /* the packet it names cannot have had 8 bytes of L4 */
	if (iph->frag_off & IP_OFFSET_MASK_BE)
		return ICMP_QUOTE_NOT_OURS;    /* a later fragment: no ports to name a flow by */
	__u8 proto = iph->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return ICMP_QUOTE_NOT_OURS;

	__u32 l4_off = ip_off + ip_len;
	if (l4_off > ICMP_QUOTE_L4_MAX)
		return ICMP_QUOTE_MALFORMED;
	VERIFIER_MASK(l4_off, 0xff);
	__u16 *ports = data + l4_off;
	if ((void *)ports + 8 > data_end || l4_off + 8 > end)
		return ICMP_QUOTE_MALFORMED;

	q->ip_off = ip_off;
	q->l4_off = l4_off;
	q->saddr = iph->saddr;
	q->daddr = iph->daddr;
	q->sport = ports[0];
	q->dport = ports[1];
	q->proto = proto;
	q->pad[0] = q->pad[1] = q->pad[2] = 0;
	/* The quoted L4 checksum is fixed only where the quote holds the whole field (netfilter does
	 * the same): UDP's is in the first 8 bytes, TCP's only in a longer quote, SCTP's CRC never. */
	__u32 csum_off = proto == IPPROTO_UDP ? l4_off + offsetof(struct udphdr, check) :
			 proto == IPPROTO_TCP ? l4_off + offsetof(struct tcphdr, check) : 0;
	q->l4_csum_off = csum_off && csum_off + 2 <= end && data + csum_off + 2 <= data_end ? csum_off : 0;
	return ICMP_QUOTE_OK;
}
