/* Entry programs on a cgroup (cgroup sock_addr hooks): Services for the node's own network
 * namespace (host processes, hostNetwork pods), whose traffic crosses no pod veth. The socket
 * itself is pointed at the backend when it connects, or, unconnected UDP, for each datagram it
 * sends; no packet is rewritten and no conntrack entry made:
 *
 *   sock_connect4   connect() to a frontend (TCP, UDP)      -> connects to a backend instead
 *   sock_sendmsg4   sendto() a frontend (unconnected UDP)   -> the datagram goes to a backend
 *   sock_recvmsg4   recvfrom() a backend's answer (UDP)     -> its source reads as the frontend
 *   sock_peername4  getpeername() of such a socket          -> the frontend
 *   sock_*6         the same for IPv6 sockets reaching IPv4 services (::ffff:a.b.c.d)
 *
 * The decision is lb.h's, as for pods: the same frontends and backends, traffic policies, and a
 * service without endpoints refused at once (connect() and sendto() fail with ECONNREFUSED, as
 * kube-proxy's REJECT in OUTPUT makes them). The hooks run for every process in the cgroup tree,
 * pods included, so only sockets of the agent's own network namespace are translated (its cookie
 * is in the config map): pods keep the tc path, other namespaces are untouched. Loopback is left
 * alone unless localhost NodePorts are asked for (CFG_FLG_LOCALHOST_NODEPORTS). */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/in.h>

#include "structs.h"
#include "consts.h"
#include "maps.h"
#include "lb.h"
#include "clock.h"
#include "affinity.h"
#include "counters.h"
#include "drops.h"
#include "trace.h"

#define SOCK_PROCEED 1
#define SOCK_REFUSE 0
/* errno values (asm-generic) */
#define SOCK_ENOMEM 12
#define SOCK_ECONNREFUSED 111
#define SOCK_EHOSTUNREACH 113

/* The config, when ctx's socket lives in the agent's network namespace; NULL otherwise. */
static __always_inline struct config *sock_in_host_netns(void *ctx)
{
	__u32 zero = 0;
	struct config *cfg = config.lookup(&zero);

	if (!cfg || !cfg->netns_cookie || bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return NULL;
	return cfg;
}

/* connect() or sendto() fails at once with `err`. What the tc path drops is counted as its drop
 * (a socket cannot be left waiting as a dropped packet leaves it): reason 0 counts nothing. */
static __always_inline int sock_refuse(int err, __u32 drop_reason)
{
	if (drop_reason)
		count_drop(drop_reason, 0);
	bpf_set_retval(-err);
	return SOCK_REFUSE;
}

static __always_inline int sock_no_endpoints(void)
{
#if REJECT_NO_ENDPOINTS
	return sock_refuse(SOCK_ECONNREFUSED, 0);
#else
	return sock_refuse(SOCK_EHOSTUNREACH, DROP_NO_ENDPOINTS);
#endif
}

static __always_inline int is_loopback(__u32 addr)
{
	return bpf_ntohl(addr) >> 24 == 127;
}

/* Remember what the socket asked for, so its answers read as coming from there; a new pair
 * (socket, backend) counts as a connection of the service. */
static __always_inline int sock_remember(__u64 cookie, const struct nat_be_value *be,
					 const struct sock_rev_value *want)
{
	struct sock_rev_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = cookie;
	key.addr = be->addr;
	key.port = be->port;
	struct sock_rev_value *have = sock_rev.lookup(&key);

	if (have && have->addr == want->addr && have->fe_addr == want->fe_addr && have->port == want->port &&
	    have->proto == want->proto && have->svc_id == want->svc_id)
		return 0;
	if (sock_rev.update(&key, (struct sock_rev_value *)want) < 0)
		return -1;
	count_connection(want->svc_id);
	return 0;
}

/* A socket about to connect to, or send to, (*addr, *port): point it at a backend (both are
 * rewritten), refuse it, or leave it alone. */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, __u32 *addr_io, __u16 *port_io)
{
	__u32 proto = ctx->protocol;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SOCK_PROCEED;
	struct config *cfg = sock_in_host_netns(ctx);
	if (!cfg)
		return SOCK_PROCEED;

	__u32 addr = *addr_io, fe_addr = addr;
	__u16 port = *port_io;
	if (is_loopback(addr)) {
		/* 127.0.0.1:NodePort, as kube-proxy's iptables mode allows (route_localnet) */
		if (!(cfg->flags & CFG_FLG_LOCALHOST_NODEPORTS) || !cfg->node_addr)
			return SOCK_PROCEED;
		fe_addr = cfg->node_addr;
	}
	if (!lb_maybe_frontend_addr(fe_addr))
		return SOCK_PROCEED;
	struct nat_fe_value *fe = lb_lookup(fe_addr, port, proto);
	if (!fe)
		/* A port of a ClusterIP that no service uses: refused, as for pods. */
		return fe_addr == addr && lb_is_service_ip(addr) ? sock_no_endpoints() : SOCK_PROCEED;
	if (fe_addr != addr && !(fe->flags & NAT_FLG_EXTERNAL))
		return SOCK_PROCEED;

	/* By the socket's cookie: one socket keeps its backend (an unconnected UDP socket's datagrams
	 * go where its first went, as conntrack keeps a pod's), sockets spread over the backends. */
	__u64 cookie = bpf_get_socket_cookie(ctx), now = clock_now();
	struct nat_be_value *be = NULL, sticky;
	__u32 ordinal;
	enum affinity_state affinity;
	/* Session affinity by the node's address, the source kube-proxy's rules see on the node's own
	 * connections: every host process is one client. */
	switch (affinity_decide(fe, 0, lb_mix(cookie ^ ((__u64)addr << 32 | (__u64)port << 16 | proto)), cfg->node_addr,
				now, &sticky, &be, &ordinal, &affinity)) {
	case LB_NO_LOCAL_ENDPOINT:
		TRACE("host socket -> %pI4: no local endpoint, refused", &addr);
		return sock_refuse(SOCK_EHOSTUNREACH, DROP_NO_LOCAL_ENDPOINT);
	case LB_NO_ENDPOINTS:
		TRACE("host socket -> %pI4: no endpoints, refused", &addr);
		return sock_no_endpoints();
	case LB_NO_BACKEND:
		return sock_refuse(SOCK_EHOSTUNREACH, DROP_NO_BACKEND);
	case LB_BACKEND:
		break;
	}
	if (!be)
		return sock_refuse(SOCK_EHOSTUNREACH, DROP_NO_BACKEND);

	struct sock_rev_value rev;

	__builtin_memset(&rev, 0, sizeof(rev));
	rev.addr = addr;
	rev.fe_addr = fe_addr;
	rev.port = port;
	rev.proto = proto;
	rev.svc_id = fe->id;
	if (sock_remember(cookie, be, &rev) < 0)
		return sock_refuse(SOCK_ENOMEM, 0);   /* its answers could not be translated */
	if (affinity != AFFINITY_OFF)
		affinity_remember(fe->id, cfg->node_addr, be, now);
	TRACE("service %d: host socket -> backend %pI4", fe->id, &be->addr);
	*addr_io = be->addr;
	*port_io = be->port;
	return SOCK_PROCEED;
}

/* An address the socket sees as its peer, (*addr, *port) (an answer's source, getpeername()):
 * the frontend it asked for when it was pointed at this backend, while that frontend still leads
 * there. */
static __always_inline void sock_reverse(struct bpf_sock_addr *ctx, __u32 *addr, __u16 *port)
{
	if (!sock_in_host_netns(ctx))
		return;
	struct sock_rev_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(ctx);
	key.addr = *addr;
	key.port = *port;
	struct sock_rev_value *rev = sock_rev.lookup(&key);
	if (!rev)
		return;
	struct nat_fe_value *fe = lb_lookup(rev->fe_addr, rev->port, rev->proto);
	if (!fe || fe->id != rev->svc_id) {
		sock_rev.delete(&key);   /* the service went: its backend is just an address again */
		return;
	}
	*addr = rev->addr;
	*port = rev->port;
}

static __always_inline int forward4(struct bpf_sock_addr *ctx)
{
	__u32 addr = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;
	int verdict = sock_forward(ctx, &addr, &port);

	if (addr != ctx->user_ip4) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return verdict;
}

static __always_inline int reverse4(struct bpf_sock_addr *ctx)
{
	__u32 addr = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;

	sock_reverse(ctx, &addr, &port);
	if (addr != ctx->user_ip4) {
		ctx->user_ip4 = addr;
		ctx->user_port = port;
	}
	return SOCK_PROCEED;
}

/* An IPv6 socket's address that is an IPv4 one (::ffff:a.b.c.d: dual-stack sockets, as Java's,
 * reaching IPv4 services): its IPv4 part in *addr. */
static __always_inline int v4_mapped(struct bpf_sock_addr *ctx, __u32 *addr)
{
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
		return 0;
	*addr = ctx->user_ip6[3];
	return 1;
}

static __always_inline int forward6(struct bpf_sock_addr *ctx)
{
	__u32 addr, before;
	__u16 port = (__u16)ctx->user_port;

	if (!v4_mapped(ctx, &addr))
		return SOCK_PROCEED;
	before = addr;
	int verdict = sock_forward(ctx, &addr, &port);
	if (addr != before) {
		ctx->user_ip6[3] = addr;
		ctx->user_port = port;
	}
	return verdict;
}

static __always_inline int reverse6(struct bpf_sock_addr *ctx)
{
	__u32 addr, before;
	__u16 port = (__u16)ctx->user_port;

	if (!v4_mapped(ctx, &addr))
		return SOCK_PROCEED;
	before = addr;
	sock_reverse(ctx, &addr, &port);
	if (addr != before) {
		ctx->user_ip6[3] = addr;
		ctx->user_port = port;
	}
	return SOCK_PROCEED;
}

int sock_connect4(struct bpf_sock_addr *ctx)
{
	return forward4(ctx);
}

int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return forward4(ctx);
}

int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

int sock_peername4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

int sock_connect6(struct bpf_sock_addr *ctx)
{
	return forward6(ctx);
}

int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return forward6(ctx);
}

int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}

int sock_peername6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}
