/* The per-packet benchmark's reference (bench/packets.py): the entry programs' parsing and
 * nothing else: no map lookup, no rewrite, no helper. parse_packet() is the very function
 * from_workload/to_workload call, inlined the same way; the parsed fields are handed to an empty
 * asm statement so the compiler cannot drop the work as dead stores. Never attached anywhere. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#include "consts.h"
#include "parse.h"

int parse_only(struct __sk_buff *skb)
{
	struct packet p;
	enum parse_result res = parse_packet(skb, &p);

	/* Keep every parsed field live, as the entry programs use them. */
	asm volatile("" : : "r"(&p), "r"(res) : "memory");
	if (res != PARSE_OK || !is_l4_with_ports(&p))
		return TC_ACT_OK;
	return TC_ACT_OK;
}
