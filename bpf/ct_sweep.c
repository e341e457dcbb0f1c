/* Entry program of the agent's conntrack sweep, run with BPF_PROG_TEST_RUN and never attached.
 *
 *   ct_delete_unchanged   "packet": CT_SWEEP_PADDING bytes, then up to CT_SWEEP_BATCH
 *                         struct ct_sweep_record (bpf/structs.h), one judged flow each
 *                         -> deletes each flow whose two halves still hold what was judged, both
 *                            together (ct_sweep_flow()); returns the entries deleted
 *   ct_sweep_keys         "packet": CT_SWEEP_PADDING bytes, a struct ct_sweep_args, then args.keys
 *                         struct ct_key and their struct ct_value as the agent read them
 *                         -> judges each flow by its state's timeout and deletes the expired ones,
 *                            both halves together (ct_sweep_flow()); returns entries deleted +
 *                            CT_SWEEP_SPARED * entries judged expired that woke before their delete
 *
 * The agent's sweep (ebpflb/datapath/conntrack.py: sweep_in_kernel()) runs ct_sweep_keys: userspace
 * reads keys in batches and gets counts back, with no Python object per entry. ct_delete_unchanged
 * deletes flows judged in Python (sweep() with in_kernel()).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#include "structs.h"
#include "consts.h"
#include "maps.h"
#include "conntrack.h"

int ct_delete_unchanged(struct __sk_buff *skb)
{
	struct ct_sweep_record rec;
	int deleted = 0;

	for (int i = 0; i < CT_SWEEP_BATCH; i++) {
		if (bpf_skb_load_bytes(skb, CT_SWEEP_PADDING + i * sizeof(rec), &rec, sizeof(rec)) < 0)
			break;   /* past the last record */
		deleted += ct_sweep_flow(&rec.key, &rec.value, &rec.twin_value);
	}
	return deleted;
}

/* The timeout of a flow's state (ebpflb/datapath/conntrack.py: timeout_for(), tcp_state()). */
static __always_inline __u64 ct_timeout_ns(const struct ct_sweep_args *a, __u8 proto, __u64 tcp_seen)
{
	if (proto == IPPROTO_TCP) {
		if (tcp_seen & CT_TCP_RST)
			return a->tcp_rst_ns;
		if ((tcp_seen & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV)) == (CT_TCP_FIN_FWD | CT_TCP_FIN_REV))
			return a->tcp_fin_ns;
		/* Established once the client's ACK followed the backend's answer: a flood's spoofed
		 * sources never send it, and their half-open flows go by tcp_syn_sent. */
		if ((tcp_seen & (CT_TCP_SYN_FWD | CT_TCP_ACK_FWD)) == (CT_TCP_SYN_FWD | CT_TCP_ACK_FWD) &&
		    (tcp_seen & (CT_TCP_SYN_REV | CT_TCP_ACK_REV)))
			return a->tcp_established_ns;
		return a->tcp_syn_sent_ns;
	}
	if (proto == IPPROTO_UDP)
		return a->udp_ns;
	if (proto == IPPROTO_ICMP)
		return a->icmp_ns;
	return a->generic_ns;
}

/* The shortest timeout any state of proto has: a flow with a half seen more recently is alive. */
static __always_inline __u64 ct_shortest_timeout_ns(const struct ct_sweep_args *a, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return ct_timeout_ns(a, proto, 0);
	__u64 t = a->tcp_syn_sent_ns;
	t = a->tcp_established_ns < t ? a->tcp_established_ns : t;
	t = a->tcp_fin_ns < t ? a->tcp_fin_ns : t;
	return a->tcp_rst_ns < t ? a->tcp_rst_ns : t;
}

/* Alive by the value the agent read (read: its first words, up to tcp_seen and type): no lookup,
 * for a lookup marks an LRU entry recently used, and a sweep that marked every entry would make
 * the LRU evict a new flow's entries (unmarked until its first reply) before idle ones. A value
 * read before a packet woke the flow is judged again below from the entry itself. */
static __always_inline int ct_plainly_alive(const struct ct_key *key, const __u64 *read, const struct ct_sweep_args *a)
{
	__u64 seen = read[1], tcp_seen = read[2];
	__u8 type = read[3] & 0xff;   /* struct ct_value: created, last_seen, tcp_seen, then type */
	if (a->now_ns <= seen)
		return 1;   /* claimed (CT_CLAIMED), or seen after the clock was read */
	__u64 timeout = type == CT_TYPE_NAT_REV ? ct_timeout_ns(a, key->proto, tcp_seen) : ct_shortest_timeout_ns(a, key->proto);
	return a->now_ns - seen <= timeout;
}

/* Judge the flow at key and delete it when idle past its timeout: entries deleted; *spared grows
 * by the entries judged expired that woke before they could go. A pair is judged once, from its
 * reply half's key (the half the programs claim first); its forward half's key is passed over
 * while the reply half names it (the walk meets that key too). By the later last_seen of both. */
static __always_inline int ct_sweep_key(struct ct_key *key, const struct ct_sweep_args *a, int *spared)
{
	struct ct_value *entry = ct.lookup(key);
	if (!entry)
		return 0;   /* gone since the agent read the key (its twin's sweep took it, or a packet) */
	struct ct_value judged = *entry;
	struct ct_value judged_twin = {};   /* type 0: no twin */
	/* judged.twin, not a copy: the stack holds two 112-byte values already */
	struct ct_value *twin = ct.lookup(&judged.twin);
	if (twin && ct_key_equal(&twin->twin, key)) {
		judged_twin = *twin;
		if (judged.type != CT_TYPE_NAT_REV && judged_twin.type == CT_TYPE_NAT_REV)
			return 0;
	}
	if (judged.last_seen_ns == CT_CLAIMED || judged_twin.last_seen_ns == CT_CLAIMED)
		return 0;   /* being deleted right now */
	__u64 last = judged.last_seen_ns > judged_twin.last_seen_ns ? judged.last_seen_ns : judged_twin.last_seen_ns;
	__u64 tcp_seen = judged.type == CT_TYPE_NAT_REV ? judged.tcp_seen : 0;
	if (a->now_ns <= last || a->now_ns - last <= ct_timeout_ns(a, key->proto, tcp_seen))
		return 0;
	int deleted = ct_sweep_flow(key, &judged, &judged_twin);
	*spared += 1 + (judged_twin.type != 0) - deleted;
	return deleted;
}

int ct_sweep_keys(struct __sk_buff *skb)
{
	struct ct_sweep_args args;
	struct ct_key key;
	__u64 read[4];
	int deleted = 0, spared = 0;

	if (bpf_skb_load_bytes(skb, CT_SWEEP_PADDING, &args, sizeof(args)) < 0 || args.keys > CT_SWEEP_KEYS)
		return 0;
	__u32 keys_at = CT_SWEEP_PADDING + sizeof(args);
	__u32 values_at = keys_at + (__u32)args.keys * sizeof(key);
	for (int i = 0; i < CT_SWEEP_KEYS && i < args.keys; i++) {
		if (bpf_skb_load_bytes(skb, keys_at + i * sizeof(key), &key, sizeof(key)) < 0 ||
		    bpf_skb_load_bytes(skb, values_at + i * sizeof(struct ct_value), read, sizeof(read)) < 0)
			break;
		if (!ct_plainly_alive(&key, read, &args))
			deleted += ct_sweep_key(&key, &args, &spared);
	}
	return deleted + spared * CT_SWEEP_SPARED;
}
