/* SCTP's checksum when a translation changes its ports.
 *
 * SCTP carries a CRC32c (Castagnoli; RFC 9260 App. A) over the SCTP packet alone, with no
 * pseudo-header: rewriting the addresses leaves it valid, rewriting a port does not. It is updated
 * here without reading the payload. A CRC is linear over GF(2): for two packets of the same length
 * crc(A) ^ crc(B) = crc0(A ^ B), crc0 being the CRC without its initial and final inversion. Only
 * the 4 port bytes at the start differ, followed by len - 4 bytes that do not, so the change is
 * crc0 of those 4 bytes shifted through len - 4 zero bytes: their XOR (a polynomial) times
 * x^(8 len) modulo the CRC's polynomial (zlib's crc32_combine does the same). x^(8 len) comes from
 * a table of every length's power the loader fills (ebpflb/datapath/sctp_crc.py): one GF(2)
 * multiplication of 32 plain steps per packet. (Computing the power too, bit by bit of len, made
 * the verifier walk 17 such loops at every place a packet is rewritten: 290k instructions.)
 *
 * The field is left alone when the CRC is not there yet: a CHECKSUM_PARTIAL skb (the stack or the
 * NIC computes it over the bytes as they leave, so the new ports are covered), a GSO skb
 * (segmentation computes each segment's), and a field of 0, which is how Linux's SCTP hands a
 * CHECKSUM_PARTIAL packet down (and what a kernel that cannot tell the skb's state sees). */
#pragma once
#include "parse.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the CRC32c field and the ports are read as little-endian words"
#endif

#define CRC32C_POLY 0x82f63b78   /* reflected */
#define SCTP_CSUM_OFF 8          /* of the checksum in the SCTP common header */
#define SCTP_CRC_POWERS 65536   /* every IPv4 packet's length */

/* [n] = x^(8 n) modulo the polynomial. Constants, not state: each loaded object has its own (256 KB),
 * filled before its programs are handed out (loader.py). */
BPF_ARRAY(sctp_crc_powers, __u32, SCTP_CRC_POWERS);

/* a * b modulo the CRC32c polynomial, reflected: bit 31 is x^0 (zlib's multmodp). */
static __always_inline __u32 crc32c_mul(__u32 a, __u32 b)
{
	__u32 p = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < 32; i++) {
		p ^= b & -((a >> (31 - i)) & 1);
		b = (b >> 1) ^ (CRC32C_POLY & -(b & 1));
	}
	return p;
}

/* What changing the first 4 bytes of an SCTP packet of `len` bytes by `delta` (old ^ new, as the
 * little-endian word they make) does to its CRC32c: XOR it into the field (read the same way). */
static __always_inline __u32 sctp_crc_change(__u32 delta, __u32 len)
{
	__u32 n = len & (SCTP_CRC_POWERS - 1);
	__u32 *power = sctp_crc_powers.lookup(&n);

	return power ? crc32c_mul(delta, *power) : 0;   /* always there: an array's index in range */
}

/* After a rewrite that XORed the ports by `ports_diff`: the CRC made to match (*change: what was
 * XORed into it; 0 when the field holds no CRC yet). -1 when the header is not where
 * parse_packet() found it. */
static __always_inline int sctp_fix_crc(void *data, void *data_end, const struct packet *p, __u32 ports_diff,
					__u32 *change)
{
	__u32 l4_off = p->l4_off;
	struct sctp_common *sctp;

	*change = 0;
	if (l4_off > ETH_HLEN_ + 60)
		return -1;
	sctp = data + l4_off;
	if ((void *)(sctp + 1) > data_end)
		return -1;
	if (!sctp->checksum || !ports_diff)
		return 0;
	*change = sctp_crc_change(ports_diff, p->l4_len);
	sctp->checksum ^= *change;
	return 0;
}
