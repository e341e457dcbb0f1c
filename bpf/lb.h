/* Service lookup and backend choice. */
#pragma once
#include "maps.h"
#include "parse.h"

static __always_inline struct nat_fe_value *lb_lookup_frontend(const struct packet *p)
{
	struct nat_fe_key key = {
		.addr = p->daddr,
		.port = p->dport,
		.proto = p->proto,
	};
	return nat_fe.lookup(&key);
}

static __always_inline int lb_is_service_ip(__u32 addr)
{
	return svc_ips.lookup(&addr) != NULL;
}

/* Uniformly random among the frontend's backends (ordinals 0..count-1). */
static __always_inline struct nat_be_value *lb_pick_backend(const struct nat_fe_value *fe)
{
	struct nat_be_key key = {
		.id = fe->id,
		.ordinal = bpf_get_prandom_u32() % fe->count,
	};
	return nat_be.lookup(&key);
}
