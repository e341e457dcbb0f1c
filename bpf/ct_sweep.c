/* Entry program of the agent's conntrack sweep, run with BPF_PROG_TEST_RUN and never attached.
 *
 *   ct_delete_unchanged   "packet": CT_SWEEP_PADDING bytes, then up to CT_SWEEP_BATCH
 *                         struct ct_sweep_record (bpf/structs.h), one judged flow each
 *                         -> deletes each flow whose two halves still hold what was judged, both
 *                            together (ct_sweep_flow()); returns the entries deleted
 *
 * The agent judges expiry in Python (ebpflb/datapath/conntrack.py); only the check-and-delete is here.
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
