/* bench.xdp's wire (never attached by the agent): a frame source and a sink around a node, for the
 * NodePort forwarding rate with frames that arrive the way a NIC's receive ring hands them over,
 * as XDP frames before any skb exists.
 *
 *   wire_source  run by BPF_PROG_TEST_RUN in live-frames mode: writes the frame's headers (the
 *                frame pages come back recycled with whatever the node wrote into them) and sends
 *                the frame out of the wire's port (WIRE_IFINDEX), so the node's uplink receives it.
 *   wire_sink    on the wire's port: counts what the node sends back, translated as expected
 *                (source SINK_SADDR, destination SINK_DADDR) or not, and drops it.
 * The loader's -D: WIRE_IFINDEX, WIRE_HEADER (the 42 bytes of Ethernet, IPv4 and UDP headers),
 * SINK_SADDR and SINK_DADDR (network order, as the packet holds them). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#define HEADER_LEN 42
#define SUNK_TRANSLATED 0
#define SUNK_OTHER 1

BPF_PERCPU_ARRAY(sunk, __u64, 2);

int wire_source(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	const __u8 header[HEADER_LEN] = {WIRE_HEADER};

	if (data + HEADER_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, header, HEADER_LEN);
	return bpf_redirect(WIRE_IFINDEX, 0);
}

int wire_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = data + ETH_HLEN;
	__u32 slot = SUNK_OTHER;

	if ((void *)(iph + 1) <= data_end && iph->saddr == SINK_SADDR && iph->daddr == SINK_DADDR)
		slot = SUNK_TRANSLATED;
	__u64 *count = sunk.lookup(&slot);
	if (count)
		(*count)++;
	return XDP_DROP;
}
