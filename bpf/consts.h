/* Numbers the programs use that are not part of a map layout. */
#pragma once

#define ETH_HLEN_ 14
#define ETH_P_IP_BE 0x0008          /* htons(ETH_P_IP) */
#define IP_MF_OFFSET_MASK 0xff3f    /* htons(IP_MF | IP_OFFSET): fragment bits, network order */
#define IP_OFFSET_MASK_BE 0xff1f    /* htons(IP_OFFSET): a later fragment's offset, network order */
#define IP_MF_BE 0x0020             /* htons(IP_MF) */
#define IP_DF_BE 0x0040             /* htons(IP_DF) */

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_RST 0x04
#define TCP_FL_ACK 0x10

#define ICMP_ECHO_REQUEST 8
#define ICMP_DEST_UNREACH_ 3
#define ICMP_PORT_UNREACH_ 3
#define ICMP_FRAG_NEEDED_ 4
#define ICMP_TIME_EXCEEDED_ 11
#define ICMP_EXC_TTL_ 0
/* An ICMP error quotes the offending IP header (with options) and 8 bytes of payload. */
#define ICMP_QUOTE_MAX (60 + 8)

/* What a service port without endpoints answers (--no-endpoints; the loader always sets it). */
#ifndef REJECT_NO_ENDPOINTS
#define REJECT_NO_ENDPOINTS 1
#endif

/* What tc programs return for a packet they let go on (untouched, or translated in place): the
 * next filter on the hook still sees it (a CNI's policy, a monitoring tool), as cls_bpf in
 * direct-action mode moves on for TC_ACT_UNSPEC; after the last filter it counts as TC_ACT_OK.
 * TC_ACT_OK would end the hook's filter list there. */
#define TC_ACT_NEXT TC_ACT_UNSPEC
