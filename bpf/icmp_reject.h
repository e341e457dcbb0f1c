/* Turn a packet into the ICMP port-unreachable its sender would get from a closed port, and send
 * it back to the pod: what kube-proxy's REJECT does for a service without endpoints. */
#pragma once
#include "consts.h"
#include "nat.h"
#include "csum.h"
#include "trace.h"

/* RFC 1122 3.2.2: no ICMP error to a source that names no single host: 0/8, 127/8, multicast
 * (224/4), 240/4 and the broadcast. */
static __always_inline int is_one_host(__u32 addr)
{
	__u8 first = bpf_ntohl(addr) >> 24;

	return first != 0 && first != 127 && first < 224;
}

/* TC_ACT_REDIRECT with the ICMP error in place of the packet, or dropped (as iptables' REJECT
 * drops what it may not answer). */
static __always_inline int reject_port_unreachable(struct __sk_buff *skb, const struct packet *p)
{
	__u8 quote[ICMP_QUOTE_MAX];
	/* IP header with options + 8 bytes; 64 bits wide so the verifier sees the bounds checked below
	 * on the very register passed to the helpers (a 32-bit copy was checked instead). */
	__u64 quote_len = (__u64)p->l4_off - ETH_HLEN_ + 8;

	if (!is_one_host(p->saddr) || quote_len > ICMP_QUOTE_MAX || quote_len < 28)
		return drop_skb(skb, DROP_NO_ENDPOINTS);
	if (bpf_skb_load_bytes(skb, ETH_HLEN_, quote, quote_len) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);

	struct iphdr ip = {
		.version = 4,
		.ihl = 5,
		.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct icmphdr) + quote_len),
		.ttl = 64,
		.protocol = IPPROTO_ICMP,
		.saddr = p->daddr,
		.daddr = p->saddr,
	};
	ip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&ip, sizeof(ip), 0));

	struct icmphdr icmp = {
		.type = ICMP_DEST_UNREACH_,
		.code = ICMP_PORT_UNREACH_,
	};
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&icmp, sizeof(icmp), 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)quote, quote_len, sum);
	icmp.checksum = csum_fold(sum);

	__u32 len = ETH_HLEN_ + sizeof(ip) + sizeof(icmp) + quote_len;
	if (bpf_skb_change_tail(skb, len, 0) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	if (bpf_skb_store_bytes(skb, ETH_HLEN_, &ip, sizeof(ip), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + sizeof(ip), &icmp, sizeof(icmp), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + sizeof(ip) + sizeof(icmp), quote, quote_len, 0) < 0)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	return redirect_back(skb);
}

/* A service port without endpoints, or a port no service has on a service address: kube-proxy's
 * answer (ICMP port unreachable), or with --no-endpoints=drop none at all. */
static __always_inline int answer_no_endpoints(struct __sk_buff *skb, const struct packet *p)
{
#if REJECT_NO_ENDPOINTS
	TRACE("%pI4 -> %pI4: no endpoints, port unreachable", &p->saddr, &p->daddr);
	return reject_port_unreachable(skb, p);
#else
	TRACE("%pI4 -> %pI4: no endpoints, dropped", &p->saddr, &p->daddr);
	return drop_skb(skb, DROP_NO_ENDPOINTS);
#endif
}
