/* What the stack's forwarding (ip_forward()) does to a packet, for the paths that send one on past
 * it with a redirect: the uplink's FIB redirect (fib.h), hairpin straight back out of a pod's veth
 * (workload.c), and the ICMP errors and later fragments that follow those flows. A packet arriving
 * with TTL 1 (or 0) goes no further and its sender gets ICMP time exceeded; the others leave with
 * the TTL one lower and the IP checksum to match. One helper for every such path, so a loop
 * through a hairpin or between nodes ends as it does through the stack. */
#pragma once
#include "parse.h"
#include "csum.h"
#include "drops.h"
#include "icmp_reject.h"

/* The TTL one lower, the checksum with it (RFC 1624): the TTL shares its 16-bit word with the
 * protocol. Shared with XDP (uplink.c). */
static __always_inline void ip_decrement_ttl(struct iphdr *iph)
{
	__u16 *ttl_proto = (__u16 *)&iph->ttl, before = *ttl_proto;

	iph->ttl--;
	iph->check = csum_apply(iph->check, csum_word_diff(before, *ttl_proto));
}

/* p: parsed before any rewrite (an answer quotes the packet as its sender sent it). answer: an ICMP
 * error the caller found owed (type << 24 | code << 16 | next-hop MTU: fib.h's frag-needed), 0 none;
 * time exceeded comes first, as in ip_forward(). may_answer: 0 for a packet no ICMP error may be
 * about (an ICMP error, a later fragment: RFC 1812 4.3.2.7), dropped and counted instead; a
 * constant at each call site, so those sites carry no copy of reject_icmp().
 * TC_ACT_NEXT: the packet goes on, its TTL one lower; else the verdict to return. */
static __always_inline int forward_hop(struct __sk_buff *skb, const struct packet *p, __u32 answer, int may_answer)
{
	if (p->ttl <= 1)
		answer = ICMP_TIME_EXCEEDED_ << 24 | ICMP_EXC_TTL_ << 16;
	if (answer) {
		__u32 reason = p->ttl <= 1 ? DROP_TTL_EXCEEDED : DROP_FRAG_NEEDED;
		if (!may_answer)
			return drop_skb(skb, reason);
		return reject_icmp(skb, p, answer >> 24, answer >> 16, answer, reason);
	}
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + ETH_HLEN_;
	if ((void *)(iph + 1) > data_end)
		return drop_skb(skb, DROP_REWRITE_FAILED);   /* cannot happen: parsed from there */
	ip_decrement_ttl(iph);
	return TC_ACT_NEXT;
}
