/* Numbers the programs use that are not part of a map layout. */
#pragma once

#define ETH_HLEN_ 14
#define ETH_P_IP_BE 0x0008          /* htons(ETH_P_IP) */
#define IP_MF_OFFSET_MASK 0xff3f    /* htons(IP_MF | IP_OFFSET): fragment bits, network order */

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_RST 0x04
#define TCP_FL_ACK 0x10

#define ICMP_ECHO_REQUEST 8
#define ICMP_DEST_UNREACH_ 3
#define ICMP_PORT_UNREACH_ 3
/* An ICMP error quotes the offending IP header (with options) and 8 bytes of payload. */
#define ICMP_QUOTE_MAX (60 + 8)

/* What a service port without endpoints answers (--no-endpoints; the loader always sets it). */
#ifndef REJECT_NO_ENDPOINTS
#define REJECT_NO_ENDPOINTS 1
#endif
