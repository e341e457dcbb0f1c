/* Ones' complement arithmetic for incremental checksum updates (RFC 1624), in plain
 * instructions: a checksum helper call (bpf_l3_csum_replace, bpf_csum_diff) costs 25-30 ns here,
 * this costs a few instructions. Sums are kept in 64 bits and folded at the end. */
#pragma once

/* What turning the 32-bit word `from` into `to` adds to a ones' complement sum. Byte order
 * does not matter as long as the field's check is loaded the same way (raw, as here). */
static __always_inline __u64 csum_word_diff(__u32 from, __u32 to)
{
	return (__u64)(__u32)~from + to;
}

/* A 64-bit sum folded to 32 bits: a __wsum that bpf_l4_csum_replace()'s diff mode accepts. */
static __always_inline __u32 csum_fold32(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return sum;
}

/* A sum folded to 16 bits and complemented: the checksum field for it. */
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u64 s = (__u64)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* A pseudo-header sum as a CHECKSUM_PARTIAL field holds it (not complemented) after the
 * pseudo-header changed by `diff`: the kernel's inet_proto_csum_replace_by_diff() for that case. */
static __always_inline __u16 csum_sum_apply(__u16 sum, __u32 diff)
{
	return ~csum_fold((__u64)sum + diff);
}

/* A checksum field after its data changed by `diff` (RFC 1624, eqn. 3: HC' = ~(~HC + m' - m)),
 * with the kernel's csum_replace4() arithmetic: ~check is taken 32 bits wide, so the sum is never
 * 0 and the result is bit for bit what bpf_l3_csum_replace() would write. */
static __always_inline __u16 csum_apply(__u16 check, __u32 diff)
{
	return csum_fold((__u64)(__u32)~(__u32)check + diff);
}
