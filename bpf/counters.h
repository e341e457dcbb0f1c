/* Per service-port counters, per CPU: no atomics on the fast path. */
#pragma once
#include "maps.h"

static __always_inline void count_packet(struct __sk_buff *skb, __u32 svc_id, int new_conn)
{
	struct svc_counters *c = svc_counters.lookup(&svc_id);

	if (!c)
		return;
	c->packets++;
	c->bytes += skb->len;
	c->connections += new_conn;
}
