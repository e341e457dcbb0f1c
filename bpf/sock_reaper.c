/* A socket iterator over the UDP sockets of the agent's network namespace, run by the agent when
 * backends leave (ebpflb/datapath/sockets.py), never attached to a hook: every connected UDP socket
 * that bpf/sock.c pointed at a backend that left that service port (sock_gone) is aborted with the
 * kfunc bpf_sock_destroy() (kernel >= 6.5). A connected socket has no later hook that could move
 * it, so its owner gets ECONNABORTED and connects again, to a live backend: what Cilium does for
 * the stale-CoreDNS problem. TCP keeps its backend, as with kube-proxy.
 *
 * The loader compiles this only where the kernel has the kfunc, and passes where struct
 * sock_common keeps the peer and the state (-DSKC_*, from the kernel's BTF). bcc 0.26 cannot emit
 * a kfunc call: the call goes to a marker helper number the loader patches (as bpf/kernel.h). */
#include <uapi/linux/bpf.h>

#include "structs.h"
#include "maps.h"

#if defined(KFUNC_SOCK_DESTROY) && defined(SKC_DADDR) && defined(SKC_DPORT) && defined(SKC_STATE)
#define SKC_STATE_ESTABLISHED 1   /* TCP_ESTABLISHED: a connected UDP socket */

/* The kernel's context of a UDP socket iterator (net/ipv4/udp.c); its types come from the
 * kernel's BTF, whatever this declaration says. */
struct bpf_iter_meta;
struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	void *udp_sk;
	__u32 uid;
	int bucket;
};

static int (*sock_destroy)(void *sk) = (void *)KFUNC_SOCK_DESTROY;

int bpf_iter__udp(struct bpf_iter__udp *ctx)
{
	void *sk = ctx->udp_sk;

	if (!sk || *(__u8 *)(sk + SKC_STATE) != SKC_STATE_ESTABLISHED)
		return 0;
	struct sock_rev_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(sk);
	key.addr = *(__u32 *)(sk + SKC_DADDR);
	key.port = *(__u16 *)(sk + SKC_DPORT);
	struct sock_rev_value *rev = sock_rev.lookup(&key);
	if (!rev)
		return 0;
	struct sock_gone_key gone;

	__builtin_memset(&gone, 0, sizeof(gone));
	gone.svc_id = rev->svc_id;
	gone.addr = key.addr;
	gone.port = key.port;
	__u32 *aborted = sock_gone.lookup(&gone);
	if (aborted && sock_destroy(sk) == 0)
		(*aborted)++;   /* one iterator runs at a time */
	return 0;
}
#endif
