/* What a hook's translation of a flow makes of a tuple, read off the flow's conntrack entry: for
 * the packets that are part of a flow without being its packets, ICMP errors about it
 * (icmp_error.h) and its later fragments (frag.h). The conditions are the entry programs' own
 * (workload.c, uplink.c): each hook applies only its own entries. */
#pragma once
#include "conntrack.h"

/* The hooks that translate flows, each applying only its own entries (as its entry program). */
enum nat_hook {
	HOOK_FROM_WORKLOAD,
	HOOK_TO_WORKLOAD,
	HOOK_FROM_UPLINK,
	HOOK_TO_UPLINK,
};

/* Where the translated packet goes. */
enum nat_path {
	NAT_PATH_NONE,   /* not this hook's to translate */
	NAT_PATH_NEXT,   /* on, translated in place */
	NAT_PATH_BACK,   /* hairpin: straight back out of the pod's veth */
	NAT_PATH_FIB,    /* SNATed from the uplink: FIB lookup and redirect */
};

struct nat_target {
	__u32 saddr;  /* be */
	__u32 daddr;  /* be */
	__u16 sport;  /* be */
	__u16 dport;  /* be */
	__u32 path;   /* enum nat_path */
};

/* Would `hook` apply entry e to a packet of tuple k, and how? The same conditions as the entry
 * programs' own paths (workload.c, uplink.c). */
static __always_inline int nat_entry_applies(enum nat_hook hook, const struct ct_value *e)
{
	__u8 both = e->flags & (CT_FLAG_SNAT | CT_FLAG_UPLINK);

	if (e->last_seen_ns == CT_CLAIMED)
		return 0;   /* being deleted */
	switch (hook) {
	case HOOK_FROM_WORKLOAD:
		return e->type == CT_TYPE_NAT_REV ? both == CT_FLAG_SNAT : !(e->flags & CT_FLAG_UPLINK);
	case HOOK_TO_WORKLOAD:
		return e->type == CT_TYPE_NAT_REV && both != (CT_FLAG_SNAT | CT_FLAG_UPLINK);
	case HOOK_FROM_UPLINK:
		return (e->flags & CT_FLAG_UPLINK) != 0;
	case HOOK_TO_UPLINK:
		return e->type == CT_TYPE_NAT_REV && both == CT_FLAG_UPLINK;
	}
	return 0;
}

/* The tuple a packet of k leaves with after entry e (NAT_FWD: destination to the backend, source
 * to the SNAT address; NAT_REV: source back to the frontend, destination back to the client). */
static __always_inline void nat_target_of(const struct ct_key *k, const struct ct_value *e, struct nat_target *t)
{
	t->saddr = k->src_addr;
	t->sport = k->src_port;
	t->daddr = k->dst_addr;
	t->dport = k->dst_port;
	if (e->type == CT_TYPE_NAT_FWD) {
		t->daddr = e->nat_addr;
		t->dport = e->nat_port;
		if (e->flags & CT_FLAG_SNAT) {
			t->saddr = e->snat_addr;
			t->sport = e->snat_port ? e->snat_port : k->src_port;
		}
	} else {
		t->saddr = e->nat_addr;
		t->sport = e->nat_port;
		if (e->flags & CT_FLAG_SNAT) {
			t->daddr = e->snat_addr;
			t->dport = e->snat_port ? e->snat_port : k->dst_port;
		}
	}
	t->path = !(e->flags & CT_FLAG_SNAT) ? NAT_PATH_NEXT :
		  (e->flags & CT_FLAG_UPLINK) ? NAT_PATH_FIB : NAT_PATH_BACK;
}

