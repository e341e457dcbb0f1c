/* What the running kernel's BTF tells the loader (ebpflb/datapath/btf.py), for what __sk_buff does not show:
 * the state of the skb's checksum (the kernel's skb->ip_summed). Knowing it, nat.h fixes the L4
 * checksum with a few instructions instead of two helper calls (~25-30 ns each on this class of
 * machine, where the whole established path is ~100 ns).
 *
 * The kfunc bpf_cast_to_kern_ctx() (kernel >= 6.3; the verifier inlines it to one move) gives the
 * struct sk_buff behind the context, and the loader passes where ip_summed sits in it on this very
 * kernel (-DSKB_IP_SUMMED_BYTE, -DSKB_IP_SUMMED_SHIFT). bcc 0.26 cannot emit a kfunc call, so the
 * call is written as a helper call to a marker number (-DKFUNC_CAST_TO_KERN_CTX) that the loader
 * turns into the kfunc call before the program is loaded. Without those facts every skb counts as
 * CHECKSUM_COMPLETE, for which nat.h leaves the L4 checksum to the kernel's helpers anyway. */
#pragma once

/* skb->ip_summed */
#define SKB_CSUM_NONE 0
#define SKB_CSUM_UNNECESSARY 1
#define SKB_CSUM_COMPLETE 2
#define SKB_CSUM_PARTIAL 3

#if defined(KFUNC_CAST_TO_KERN_CTX) && defined(SKB_IP_SUMMED_BYTE) && defined(SKB_IP_SUMMED_SHIFT)
static void *(*cast_to_kern_ctx)(void *ctx) = (void *)KFUNC_CAST_TO_KERN_CTX;

static __always_inline int skb_csum_state(struct __sk_buff *skb)
{
	const __u8 *kskb = cast_to_kern_ctx(skb);
	return (kskb[SKB_IP_SUMMED_BYTE] >> SKB_IP_SUMMED_SHIFT) & 3;
}
#else
static __always_inline int skb_csum_state(struct __sk_buff *skb)
{
	return SKB_CSUM_COMPLETE;
}
#endif
