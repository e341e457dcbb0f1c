/* Session affinity (sessionAffinity: ClientIP), kube-proxy's way: per service port and client
 * address, each new connection within the timeout goes to the backend the client's last new
 * connection went to, and that connection renews the timeout (iptables' `recent --set` on new
 * connections, `--rcheck --seconds` before the random pick). Every entry point that decides a new
 * flow calls affinity_decide() in place of lb_decide(), and affinity_remember() once the flow (or
 * the socket's translation) exists; nothing here knows an skb, an XDP frame or a socket.
 *
 * An entry is followed only while its backend is among the frontend's candidates (affinity_be
 * holds the affinity services' backends with their ordinals, written by the agent): a backend that
 * left, or one outside a Local policy's local set, is ignored and the next connection picks anew.
 * Expired entries are not deleted here: the next connection overwrites them, the agent's sweep and
 * the LRU do the rest. */
#pragma once
#include "maps.h"
#include "parse.h"
#include "lb.h"

#define AFFINITY_NS_PER_S 1000000000ULL

enum affinity_state {
	AFFINITY_OFF,    /* the service port has no affinity */
	AFFINITY_NONE,   /* on, but no live entry for this client among the candidates: pick */
	AFFINITY_HIT,    /* *be and *ordinal are the client's backend */
};

/* What affinity says for a new flow from `client` to service port `svc_id`, whose candidates are
 * ordinals 0..n-1. */
static __always_inline enum affinity_state affinity_pick(__u32 svc_id, __u32 client, __u32 n, __u64 now,
							 struct nat_be_value *be, __u32 *ordinal)
{
	struct affinity_svc *svc = affinity_svc.lookup(&svc_id);   /* an array: inlined, no call */

	if (!svc || !svc->timeout_s)
		return AFFINITY_OFF;
	struct affinity_key key;

	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc_id;
	key.client_addr = client;
	struct affinity_value *last = affinity.lookup(&key);
	/* Signed: another CPU's or program's clock may be a tick behind the one that wrote it. */
	if (!last || (__s64)(now - last->last_used_ns) > (__s64)(svc->timeout_s * AFFINITY_NS_PER_S))
		return AFFINITY_NONE;
	struct affinity_be_key member;

	__builtin_memset(&member, 0, sizeof(member));
	member.svc_id = svc_id;
	member.addr = last->backend_addr;
	member.port = last->backend_port;
	__u32 *at = affinity_be.lookup(&member);
	if (!at || *at >= n)
		return AFFINITY_NONE;
	__builtin_memset(be, 0, sizeof(*be));
	be->addr = member.addr;
	be->port = member.port;
	*ordinal = *at;
	return AFFINITY_HIT;
}

/* The client's new connection went to `be`: remember it, from now. */
static __always_inline void affinity_remember(__u32 svc_id, __u32 client, const struct nat_be_value *be, __u64 now)
{
	struct affinity_key key;
	struct affinity_value value;

	__builtin_memset(&key, 0, sizeof(key));
	key.svc_id = svc_id;
	key.client_addr = client;
	__builtin_memset(&value, 0, sizeof(value));
	value.last_used_ns = now;
	value.backend_addr = be->addr;
	value.backend_port = be->port;
	affinity.update(&key, &value);
}

/* lb_decide(), the client's own backend first: *state says whether affinity is on for fe (then
 * remember the flow's backend once it exists) and whether *be came from it (then *be is `sticky`). */
static __always_inline enum lb_verdict affinity_decide(const struct nat_fe_value *fe, int from_outside, __u32 hash,
						       __u32 client, __u64 now, struct nat_be_value *sticky,
						       struct nat_be_value **be, __u32 *ordinal,
						       enum affinity_state *state)
{
	*state = affinity_pick(fe->id, client, lb_candidates(fe, from_outside), now, sticky, ordinal);
	if (*state == AFFINITY_HIT) {
		*be = sticky;
		return LB_BACKEND;
	}
	return lb_decide(fe, from_outside, hash, be, ordinal);
}
