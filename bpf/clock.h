/* "Now" for conntrack timestamps, cheaply. bpf_ktime_get_ns() costs ~35 ns a call here (a
 * clocksource read behind a helper call): more than the conntrack lookup itself. Jiffies cost
 * nothing (the verifier inlines bpf_jiffies64()), so the clock is read once per jiffy and the
 * value shared. Timestamps are then up to a tick (1-10 ms) old: nothing next to the sweep's
 * timeouts (seconds), and a touch only ever moves last_seen forward (ct_touch_time()), so a CPU
 * whose reading is a little older never moves it back. */
#pragma once

/* Not a map user space reads (so not in structs.h, not pinned): each loaded object keeps its own. */
struct clock_cache {
	__u64 jiffies;
	__u64 ns;
};
BPF_ARRAY(clock_cache, struct clock_cache, 1);

static __always_inline __u64 clock_now(void)
{
	__u32 zero = 0;
	struct clock_cache *c = clock_cache.lookup(&zero);
	__u64 jiffies = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_ns();
	/* Racing CPUs write the same tick's value; a reader that sees the new jiffies with the old
	 * ns is one tick behind, which is all this clock promises. */
	if (c->jiffies != jiffies || !c->ns) {
		c->ns = bpf_ktime_get_ns();
		c->jiffies = jiffies;
	}
	return c->ns;
}
