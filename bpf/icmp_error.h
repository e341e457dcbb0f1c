/* ICMP errors about a NATed flow (what netfilter does for kube-proxy as "related" packets): a
 * backend's port unreachable, a router's frag-needed (path MTU discovery) or time exceeded, a
 * client's port unreachable for a reply. The quoted packet is one the flow sent, so the error
 * travels the way the flow's other direction does: it is translated as a packet of the quote's
 * reversed tuple would be at this hook (the same conntrack entry, the same conditions), and its
 * quote the inverse way, so the sender sees the error about the packet it sent:
 *
 *   backend B answers C's datagram to VIP:  B -> C   [quote C:c -> B:b]    at C's side (NAT_REV of B:b -> C:c)
 *                                 becomes:  VIP -> C [quote C:c -> VIP:v]
 *   client C refuses a reply from VIP:      C -> VIP [quote VIP:v -> C:c]  (NAT_FWD of C:c -> VIP:v)
 *                                 becomes:  C -> B   [quote B:b -> C:c]
 *
 * The outer source is translated only when the flow's own peer sent the error; a router's stays.
 * Every checksum follows (RFC 1624, csum.h): the outer IP header's, the quoted IP header's, the
 * quoted L4 checksum where the quote holds it (a UDP checksum of 0 stays 0), and the ICMP
 * checksum over all the quote's changes. The error is not a packet of the flow: it neither
 * touches nor creates conntrack entries. Errors about flows not ours pass untouched. */
#pragma once
#include "icmp_error_parse.h"
#include "ct_target.h"
#include "csum.h"
#include "nat.h"
#include "fib.h"
#include "forward.h"
#include "trace.h"

/* The quoted flow's entry for this hook, and what it makes of the error's outer tuple
 * (t->saddr/daddr: the new outer addresses). NAT_PATH_NONE: pass the error untouched. */
static __always_inline int icmp_error_target(enum nat_hook hook, const struct packet *p, const struct icmp_quote *q,
					     struct nat_target *t)
{
	struct ct_key k;

	__builtin_memset(&k, 0, sizeof(k));
	k.src_addr = q->daddr;
	k.dst_addr = q->saddr;
	k.src_port = q->dport;
	k.dst_port = q->sport;
	k.proto = q->proto;
	/* The error goes where the quoted packet came from; one that does not is no part of it. */
	if (p->daddr != q->saddr)
		return NAT_PATH_NONE;
	struct ct_value *e = ct.lookup(&k);
	if (!e || !nat_entry_applies(hook, e))
		return NAT_PATH_NONE;
	nat_target_of(&k, e, t);
	return t->path;
}

/* Rewrite the error in place: the quote to (t's destination -> t's source), the outer destination
 * to t's, the outer source to t's when the quoted packet's destination sent the error. data..data_end:
 * the frame, the quote linear. -1: not where the parse found it (the caller drops, never half). */
static __always_inline int icmp_error_rewrite(void *data, void *data_end, const struct packet *p,
					      const struct icmp_quote *q, struct nat_target *t)
{
	struct iphdr *outer = data + ETH_HLEN_;
	__u32 icmp_off = p->l4_off, ip_off = q->ip_off, l4_off = q->l4_off, csum_off = q->l4_csum_off;

	if ((void *)(outer + 1) > data_end || icmp_off > ETH_HLEN_ + 60 ||
	    ip_off > ETH_HLEN_ + 60 + ICMP_HDR_LEN || l4_off > ICMP_QUOTE_L4_MAX || csum_off > ICMP_QUOTE_L4_MAX + 16)
		return -1;
	struct icmphdr *icmp = data + icmp_off;
	struct iphdr *quoted = data + ip_off;
	__u16 *ports = data + l4_off;
	if ((void *)(icmp + 1) > data_end || (void *)(quoted + 1) > data_end || (void *)ports + 4 > data_end)
		return -1;

	/* The quoted packet as its sender sent it: from t's destination, to t's source. */
	__u32 q_saddr = t->daddr, q_daddr = t->saddr;
	__u32 old_ports = nat_ports(q->sport, q->dport), new_ports = nat_ports(t->dport, t->sport);
	__u32 q_addr_diff = csum_fold32(csum_word_diff(q->saddr, q_saddr) + csum_word_diff(q->daddr, q_daddr));
	__u32 ports_diff = csum_fold32(csum_word_diff(old_ports, new_ports));
	__u64 icmp_diff = (__u64)q_addr_diff + ports_diff;

	__u16 old_check = quoted->check, new_check = csum_apply(old_check, q_addr_diff);
	icmp_diff += csum_word_diff(old_check, new_check);
	if (csum_off) {
		__u16 *l4_check = data + csum_off;
		if ((void *)(l4_check + 1) > data_end)
			return -1;
		old_check = *l4_check;
		if (q->proto == IPPROTO_TCP || old_check) {   /* a UDP checksum of 0 means none, and stays 0 */
			__u16 check = csum_apply(csum_apply(old_check, q_addr_diff), ports_diff);
			if (q->proto == IPPROTO_UDP && !check)
				check = 0xffff;
			icmp_diff += csum_word_diff(old_check, check);
			*l4_check = check;
		}
	}
	quoted->check = new_check;
	quoted->saddr = q_saddr;
	quoted->daddr = q_daddr;
	ports[0] = t->dport;
	ports[1] = t->sport;
	icmp->checksum = csum_apply(icmp->checksum, csum_fold32(icmp_diff));

	/* Outer: to where a packet of the flow's other direction would go; from the flow's side when
	 * that side sent it (a router on the way keeps its own address). */
	__u32 o_saddr = p->saddr == q->daddr ? t->saddr : p->saddr;
	outer->check = csum_apply(outer->check,
				  csum_fold32(csum_word_diff(p->saddr, o_saddr) + csum_word_diff(p->daddr, t->daddr)));
	outer->saddr = o_saddr;
	outer->daddr = t->daddr;
	t->saddr = o_saddr;   /* what the caller routes by */
	return 0;
}

/* tc: an ICMP error (p: PARSE_OK, icmp_is_error()) at `hook`, translated when it is about one of
 * this hook's flows and sent where that flow's packets go; else passed untouched, or with
 * drop_untranslated dropped (to a ClusterIP, which carries nothing but its ports). */
static __always_inline int icmp_error_tc(struct __sk_buff *skb, const struct packet *p, enum nat_hook hook,
					 int drop_untranslated)
{
	struct icmp_quote q;
	struct nat_target t;

	/* Direct access needs the quote in the linear part; an error is small (Linux sends <= 576
	 * bytes). 0: all of it. */
	if (bpf_skb_pull_data(skb, 0) < 0)
		goto untranslated;
	CTX_FRESH(skb);
	void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
	if (icmp_parse_quote(data, data_end, p, &q) != ICMP_QUOTE_OK ||
	    icmp_error_target(hook, p, &q, &t) == NAT_PATH_NONE)
		goto untranslated;
	/* data..data_end still hold: a map lookup changes no packet */
	if (icmp_error_rewrite(data, data_end, p, &q, &t) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	TRACE("icmp error type %d about a NATed flow, to %pI4", p->icmp_type, &t.daddr);
	if (t.path == NAT_PATH_FIB)
		return redirect_by_fib(skb, p, t.saddr, t.daddr);
	if (t.path == NAT_PATH_BACK) {
		int verdict = forward_hop(skb, p, 0, 0);   /* past the stack: one hop, no answer about an error */
		return verdict != TC_ACT_NEXT ? verdict : redirect_back(skb);
	}
	return TC_ACT_NEXT;
untranslated:
	return drop_untranslated ? drop_skb(skb, DROP_NOT_L4_TO_SERVICE) : TC_ACT_NEXT;
}
