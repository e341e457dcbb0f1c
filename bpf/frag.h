/* IPv4 fragments through the NAT. Only a datagram's first fragment carries its L4 header, so only
 * it can be matched to a flow: it is translated like any packet (parse.h lets it through as one;
 * its L4 checksum covers the whole datagram, so the incremental fix holds). Each tc hook remembers
 * every first fragment's ports, keyed by (source, destination, IP id, protocol) as it came in; a
 * later fragment takes them back and gets the translation its flow's conntrack entry gives at this
 * hook (ct_target.h: the entry programs' conditions), which is the first fragment's: the addresses
 * and the IP checksum, nothing of L4, which it does not carry (frag_forward.h). To a VIP and as a
 * backend's fragmented reply alike. Remembering every first fragment, not only translated ones,
 * keeps a direct datagram that reuses an IP id from taking an old translated one's ports.
 *
 * A later fragment whose first was not seen (reordered ahead of it) cannot be translated: to a
 * service address it is dropped (fragment-unknown); anywhere else it passes untouched. XDP
 * passes every fragment to tc.
 *
 * The uplink also hands the stack what it would forward past it but is too big for the egress and
 * may be fragmented (no DF, fib.h): with its destination translated and its source not (the stack
 * calls our own SNAT source a martian). Its source NAT is remembered by the same key as the packet
 * is handed up, and to_uplink puts it on every fragment the stack cut from it (they keep the id):
 * the first one's address, port and L4 checksum, the later ones' address and IP checksum. */
#pragma once
#include "parse.h"
#include "clock.h"
#include "drops.h"
#include "maps.h"

/* Not a map user space reads (so not in structs.h, not pinned): each loaded object keeps its
 * own, and a datagram's fragments all pass the same hook within moments. */
#define FRAG_MAX 8192
/* Linux gives up reassembling after 30 s (ipfrag_time): older entries are not trusted, so an IP id
 * that came round again is not taken for an old datagram. */
#define FRAG_TIMEOUT_NS (30ULL * 1000000000ULL)

/* Addresses as structs.h keeps them (16 bytes, IPv4 in the first word, a family tag), and a 32-bit
 * id: IPv6's fragment header carries one (IPv4's 16 bits are its first half). */
struct frag_key {
	union {
		__u32 saddr;   /* be */
		__u32 saddr6[4];
	};
	union {
		__u32 daddr;   /* be */
		__u32 daddr6[4];
	};
	__u32 ip_id;   /* be */
	__u8 proto;
	__u8 family;   /* FAMILY_* */
	__u8 pad[2];
};

struct frag_value {
	__u64 seen_ns;   /* the first fragment's time (clock.h) */
	__u16 sport;     /* be: the datagram's ports, as its first fragment carried them */
	__u16 dport;     /* be */
	__u32 pad;
};

BPF_TABLE("lru_hash", struct frag_key, struct frag_value, frags, FRAG_MAX);

static __always_inline void frag_key_of(const struct packet *p, struct frag_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->ip_id = p->ip_id;
	k->proto = p->proto;
}

/* A datagram handed to the stack to fragment: the source its fragments leave with. */
struct frag_snat_value {
	__u64 seen_ns;   /* when it was handed up (clock.h) */
	union {
		__u32 saddr;     /* be */
		__u32 saddr6[4];
	};
	__u16 sport;     /* be; its later fragments have none */
	__u8 family;
	__u8 pad;
	__u32 pad2;
};

BPF_TABLE("lru_hash", struct frag_key, struct frag_snat_value, frag_snats, FRAG_MAX);

/* A first fragment (TCP, UDP): its later fragments will want its ports. */
static __always_inline void frag_remember(const struct packet *p)
{
	struct frag_key k;

	if (!is_l4_with_ports(p))
		return;
	struct frag_value v = {
		.seen_ns = clock_now(),
		.sport = p->sport,
		.dport = p->dport,
	};
	frag_key_of(p, &k);
	frags.update(&k, &v);
}

/* A later fragment: its datagram's ports into p (0), or -1 when its first was not seen. */
static __always_inline int frag_ports(struct packet *p)
{
	struct frag_key k;

	frag_key_of(p, &k);
	struct frag_value *v = frags.lookup(&k);
	if (!v || clock_now() > v->seen_ns + FRAG_TIMEOUT_NS)
		return -1;
	p->sport = v->sport;
	p->dport = v->dport;
	return 0;
}

/* p (parsed as it came in) goes to the stack with its destination translated, to be fragmented
 * there: its fragments, (p's source, daddr, p's id, p's protocol), are to leave from (saddr, sport).
 * A later fragment handed up renews its first's entry. */
static __always_inline void frag_snat_remember(const struct packet *p, __u32 daddr, __u32 saddr, __u16 sport)
{
	struct frag_key k;
	struct frag_snat_value v;

	__builtin_memset(&v, 0, sizeof(v));
	v.seen_ns = clock_now();
	v.saddr = saddr;
	v.sport = sport;

	frag_key_of(p, &k);
	k.daddr = daddr;
	frag_snats.update(&k, &v);
}

/* A fragment leaving by the uplink: the source NAT of the datagram it was cut from, or NULL when
 * it is no such fragment. */
static __always_inline struct frag_snat_value *frag_snat_of(const struct packet *p)
{
	struct frag_key k;

	frag_key_of(p, &k);
	struct frag_snat_value *v = frag_snats.lookup(&k);
	return v && clock_now() <= v->seen_ns + FRAG_TIMEOUT_NS ? v : NULL;
}
