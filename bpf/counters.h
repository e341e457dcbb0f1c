/* Per service-port counters, per CPU: no atomics on the fast path. */
#pragma once
#include "maps.h"

static __always_inline void count_bytes(__u32 svc_id, __u32 len, int new_conn)
{
	struct svc_counters *c = svc_counters.lookup(&svc_id);

	if (!c)
		return;
	c->packets++;
	c->bytes += len;
	c->connections += new_conn;
}

static __always_inline void count_packet(struct __sk_buff *skb, __u32 svc_id, int new_conn)
{
	count_bytes(svc_id, skb->len, new_conn);
}

/* A host socket pointed at a backend (bpf/sock.c): a connection, no packet seen. */
static __always_inline void count_connection(__u32 svc_id)
{
	struct svc_counters *c = svc_counters.lookup(&svc_id);

	if (c)
		c->connections++;
}
