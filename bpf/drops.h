/* Every packet the programs drop is counted by why, per CPU (no atomics): `ebpflb drops` and
 * ebpflb_dropped_packets_total{reason}. The drop paths call these; nothing else returns
 * TC_ACT_SHOT or XDP_DROP. */
#pragma once
#include "maps.h"

static __always_inline void count_drop(__u32 reason, __u32 len)
{
	struct drop_counters *c = drops.lookup(&reason);

	if (!c)
		return;
	c->packets++;
	c->bytes += len;
}

static __always_inline int drop_skb(struct __sk_buff *skb, __u32 reason)
{
	count_drop(reason, skb->len);
	return TC_ACT_SHOT;
}

static __always_inline int drop_xdp(struct xdp_md *ctx, __u32 reason)
{
	count_drop(reason, ctx->data_end - ctx->data);
	return XDP_DROP;
}
