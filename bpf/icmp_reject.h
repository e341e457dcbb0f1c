/* Turn a packet into the ICMP error its sender would get, and send it back where it came from:
 * port unreachable for a service without endpoints (kube-proxy's REJECT), and for what fib.h
 * forwards past the stack, the stack's own frag-needed (with the egress MTU) and time exceeded. */
#pragma once
#include "consts.h"
#include "nat.h"
#include "csum.h"
#include "trace.h"
#include "clock.h"
#include "maps.h"

/* The quote, off the stack (512 bytes for the whole program, and each inlined caller would take its
 * own copy): one per CPU, a program run is not interrupted by another on its CPU. */
struct icmp_quote_buf {
	__u8 bytes[ICMP_QUOTE_MAX];
};
BPF_PERCPU_ARRAY(icmp_quote_scratch, struct icmp_quote_buf, 1);

/* RFC 1122 3.2.2: no ICMP error to a source that names no single host: 0/8, 127/8, multicast
 * (224/4), 240/4 and the broadcast. */
static __always_inline int is_one_host(__u32 addr)
{
	__u8 first = bpf_ntohl(addr) >> 24;

	return first != 0 && first != 127 && first < 224;
}

/* May one more ICMP error go now? The kernel limits what it sends (icmp_global_allow(): by default
 * 1,000 a second, bursts of 50); so do the programs, with the agent's --icmp-rate and --icmp-burst,
 * node-wide. Credit is added when the clock has moved (CPUs racing: one adds it, by compare-and-swap
 * of the stamp) and taken with an atomic add; a race may let a few more go, never many. */
static __always_inline int icmp_allowed(void)
{
	__u32 zero = 0;
	struct config *cfg = config.lookup(&zero);
	struct icmp_bucket *b = icmp_bucket.lookup(&zero);

	if (!cfg || !b)
		return 1;
	if (!(cfg->flags & CFG_FLG_ICMP_RATE_LIMIT))
		return 1;   /* an older agent's config: as before, unlimited */
	__u64 now = clock_now(), stamp = b->stamp_ns;
	__u64 delta = now > stamp ? now - stamp : 0;
	if (delta > 1000000000ULL)
		delta = 1000000000ULL;   /* a second refills any bucket; keeps the product below 2^64 */
	/* a bucket never used starts full */
	__u64 add = stamp ? delta * cfg->icmp_rate / 1000000000ULL : cfg->icmp_burst;
	if ((add || !stamp) && __sync_val_compare_and_swap(&b->stamp_ns, stamp, now) == stamp) {
		__s64 credit = (__s64)b->credit + add;
		b->credit = credit > cfg->icmp_burst ? cfg->icmp_burst : credit;
	}
	if ((__s64)b->credit <= 0)
		return 0;
	__sync_fetch_and_add(&b->credit, -1);
	return 1;
}

/* TC_ACT_REDIRECT with the ICMP error (type, code; mtu: frag-needed's next-hop MTU) in place of the
 * packet, quoting it as it came in; or dropped under drop_reason (as iptables' REJECT drops what it
 * may not answer). */
static __always_inline int reject_icmp(struct __sk_buff *skb, const struct packet *p, __u8 type, __u8 code,
				       __u16 mtu, __u32 drop_reason)
{
	__u32 zero = 0;
	struct icmp_quote_buf *buf = icmp_quote_scratch.lookup(&zero);
	/* IP header with options + 8 bytes; 64 bits wide so the verifier sees the bounds checked below
	 * on the very register passed to the helpers (a 32-bit copy was checked instead). */
	__u64 quote_len = (__u64)p->l4_off - ETH_HLEN_ + 8;

	if (!is_one_host(p->saddr) || quote_len > ICMP_QUOTE_MAX || quote_len < 28)
		return drop_skb(skb, drop_reason);
	if (!buf)
		return drop_skb(skb, DROP_REWRITE_FAILED);
	if (!icmp_allowed())
		return drop_skb(skb, DROP_ICMP_RATE_LIMITED);
	__u8 *quote = buf->bytes;
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
		.type = type,
		.code = code,
		.un.frag.mtu = bpf_htons(mtu),
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
	return reject_icmp(skb, p, ICMP_DEST_UNREACH_, ICMP_PORT_UNREACH_, 0, DROP_NO_ENDPOINTS);
#else
	TRACE("%pI4 -> %pI4: no endpoints, dropped", &p->saddr, &p->daddr);
	return drop_skb(skb, DROP_NO_ENDPOINTS);
#endif
}
