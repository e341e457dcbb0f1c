/* Every key and value of ebpflb's maps: the one definition, compiled into the BPF programs
 * and read by Python through cffi (ebpflb/datapath/structs.py).
 *
 * cffi parses this file as it is, so it keeps to what cffi's cdef understands: `#define NAME
 * <integer>` and plain structs of __u8/__u16/__u32/__u64 with explicit padding (no includes, no
 * expressions, no attributes). Addresses and ports are in network byte order ("be" in the
 * comments), as the packet carries them.
 *
 * Change a layout -> bump EBPFLB_LAYOUT_VERSION: readers refuse maps of another version.
 */

#define EBPFLB_LAYOUT_VERSION 8

/* Addresses of both families, one layout (layout 8): every key and value that holds an address
 * keeps 16 bytes for it and a family tag. An IPv4 address lives in the first 4 bytes, in network
 * order, and the other 12 are zero; an IPv6 address takes all 16. Each is an anonymous union whose
 * first member keeps layout 7's name (`__u32 addr` etc.: the IPv4 address, the first word), so
 * code that reads IPv4 reads it as before; `addr6` is the whole 16 bytes. FAMILY_IPV4 is 0: a key
 * zeroed and given an IPv4 address is an IPv4 key. Keys are zeroed whole before their fields are
 * set (a hash compares every byte, and the verifier refuses uninitialised stack). */
#define FAMILY_IPV4 0
#define FAMILY_IPV6 6

/* Map sizes (entries). */
#define NAT_FE_MAX 131072
#define NAT_BE_MAX 1048576
#define SVC_IP_MAX 131072
#define CT_MAX 524288
#define SVC_COUNTERS_MAX 131072   /* one per service port: as many as frontends can be */
#define SRC_RANGES_MAX 65536
#define AFFINITY_MAX 65536        /* (service port, client) pairs remembered; least recently used evicted */
#define SOCK_REV_MAX 262144       /* host sockets pointed at a backend (LRU), as Cilium's lb4_reverse_nat_sk */
#define SOCK_GONE_MAX 4096        /* backends one reaper run looks for */

/* svc_addr_bits: one bit per hash of an address, set when a service frontend (or a ClusterIP) may
 * be there. bit = (addr_be * SVC_ADDR_HASH_MUL mod 2^32) >> (32 - SVC_ADDR_BITS_LOG2), in word
 * bit / 64 of the array, bit % 64 in it (the same formula in ebpflb/sync/addr_bits.py). An IPv6
 * address is folded first: addr_be = the XOR of its four 32-bit words as memory holds them (an
 * IPv4 address, its 12 other bytes zero, folds to itself). */
#define SVC_ADDR_BITS_LOG2 20
#define SVC_ADDR_HASH_MUL 2654435761
#define SVC_ADDR_WORDS 16384

/* nat_fe_value.flags (names follow Calico's nat dump where it has them). */
#define NAT_FLG_EXTERNAL_LOCAL 1   /* from outside: only local backends (ordinals < local), no SNAT */
#define NAT_FLG_INTERNAL_LOCAL 2   /* from pods: only local backends */
#define NAT_FLG_EXTERNAL 4         /* served to traffic from the uplink (NodePort, externalIP, LB) */
#define NAT_FLG_SRC_RANGES 8       /* from outside only sources in src_ranges (id) may pass */

/* ct_value.type */
#define CT_TYPE_NAT_FWD 1
#define CT_TYPE_NAT_REV 2

/* ct_value.flags */
#define CT_FLAG_SNAT 1       /* hairpin: source rewritten too */
#define CT_FLAG_UPLINK 2     /* came in on the uplink; SNAT to the node address when CT_FLAG_SNAT */

/* ct_value.tcp_seen: TCP flags seen on the flow, per direction. Kept in the NAT_REV entry, set
 * with an atomic OR (several CPUs may add bits at once). */
#define CT_TCP_SYN_FWD 1
#define CT_TCP_SYN_REV 2
#define CT_TCP_FIN_FWD 4
#define CT_TCP_FIN_REV 8
#define CT_TCP_RST 16
#define CT_TCP_ACK_REV 32
/* The client's ACK, a packet it sends only once it has the backend's SYN-ACK (a spoofed source never
 * does): with SYN_FWD and SYN_REV (or ACK_REV), the flow is established; until then it is half-open,
 * expires by tcp_syn_sent, and its SNAT port may be reclaimed (bpf/snat.h). Set in the reply half
 * (where the sweep judges it), then in the forward half, whose packets test it there. */
#define CT_TCP_ACK_FWD 64

/* ct_value.last_seen_ns of an entry someone is deleting (or replacing): claimed with an atomic
 * compare-and-swap, so one deleter wins and a packet's touch never moves it (bpf/conntrack.h). */
#define CT_CLAIMED 0xffffffffffffffff

/* config.flags */
#define CFG_FLG_NONE 0
#define CFG_FLG_LOCALHOST_NODEPORTS 1   /* host sockets reach NodePorts on 127.0.0.0/8 too (bpf/sock.c) */
#define CFG_FLG_ICMP_RATE_LIMIT 2       /* icmp_rate and icmp_burst hold (an older agent's config: no limit) */

/* A service frontend: (address, port, IP protocol). */
struct nat_fe_key {
	union {
		__u32 addr;      /* be: IPv4 */
		__u32 addr6[4];  /* be: IPv6 (or IPv4 and 12 zero bytes) */
	};
	__u16 port;  /* be */
	__u8 proto;
	__u8 family; /* FAMILY_* */
};

/* A frontend names the generation of its backend slots: the agent writes a changed backend list
 * into a generation no frontend reads, then switches each frontend over with one update (count,
 * local and gen together), then deletes the old generation. A packet sees the old list or the new
 * one, never slots of one with the count or local of the other. */
struct nat_fe_value {
	__u32 id;     /* service-port id: backends are (id, gen, 0..count-1) */
	__u32 count;  /* backends in use; 0 = reject (or drop when *_LOCAL) */
	__u32 local;  /* backends on this node: ordinals 0..local-1 */
	__u32 flags;  /* NAT_FLG_* */
	__u32 gen;    /* the generation of slots this frontend reads */
	__u32 owner;  /* the service port's name, hashed (the programs never read it): a restarted agent
	               * gives the id back only to that name (ebpflb/core/ids.py: owner_tag) */
};

struct nat_be_key {
	__u32 id;
	__u32 gen;
	__u32 ordinal;
};

struct nat_be_value {
	union {
		__u32 addr;      /* be */
		__u32 addr6[4];
	};
	__u16 port;  /* be */
	__u8 family;
	__u8 pad;
};

/* Addresses that belong to services: ports no service uses there are rejected, and the
 * address does not answer ping. */
struct svc_ip_key {
	union {
		__u32 addr;      /* be */
		__u32 addr6[4];
	};
	__u8 family;
	__u8 pad[3];
};

struct svc_ip_value {
	__u32 flags;
};

/* A conntrack key is directional: the tuple as the packet carries it. */
struct ct_key {
	union {
		__u32 src_addr;      /* be */
		__u32 src_addr6[4];
	};
	union {
		__u32 dst_addr;      /* be */
		__u32 dst_addr6[4];
	};
	__u16 src_port;  /* be */
	__u16 dst_port;  /* be */
	__u8 proto;
	__u8 family;     /* of both addresses */
	__u8 pad[2];
};

/* A NATed flow has two entries: NAT_FWD keyed by what the client sends (client -> VIP) and
 * NAT_REV keyed by what the backend answers (backend -> client). Each names the other (twin).
 * The fields written with atomics are 64 bits wide: bcc emits BPF atomics on 64-bit operands only. */
struct ct_value {
	__u64 created_ns;    /* CLOCK_MONOTONIC (bpf_ktime_get_ns()), to a jiffy: bpf/clock.h */
	__u64 last_seen_ns;  /* last packet in this entry's direction; CT_CLAIMED while being deleted */
	__u64 tcp_seen;      /* CT_TCP_*; authoritative in the NAT_REV entry */
	__u8 type;           /* CT_TYPE_* */
	__u8 flags;          /* CT_FLAG_* */
	__u8 family;         /* of nat_addr and snat_addr: the flow's (its key's) */
	__u8 pad0;
	__u32 svc_id;
	/* NAT_FWD: destination becomes (nat_addr, nat_port), the backend.
	 * NAT_REV: source becomes (nat_addr, nat_port), the service frontend. */
	union {
		__u32 nat_addr;      /* be */
		__u32 nat_addr6[4];
	};
	__u16 nat_port;      /* be */
	/* With CT_FLAG_SNAT: NAT_FWD source becomes (snat_addr, snat_port) (hairpin address, or
	 * the node's address from the uplink); NAT_REV destination becomes it (the client). */
	__u16 snat_port;     /* be; 0 = keep the port */
	union {
		__u32 snat_addr;     /* be */
		__u32 snat_addr6[4];
	};
	__u32 pad2;
	struct ct_key twin;  /* at a multiple of 8 bytes: ct_key_equal() compares it by 64-bit words */
};

/* One flow the agent's sweep judged expired, as it read it: an entry and its twin (twin_value.type
 * 0: the twin was missing). bpf/ct_sweep.c takes up to CT_SWEEP_BATCH of them as a test run's
 * packet, after CT_SWEEP_PADDING bytes (a tc test run's packet starts with an Ethernet header),
 * and deletes a flow only while both halves still hold exactly what was judged: a pair goes as a
 * pair, and a flow that woke meanwhile keeps both halves. */
#define CT_SWEEP_BATCH 8   /* a test run's packet is at most a page less the skb's room: 14 + 8 * 264 */
#define CT_SWEEP_PADDING 14
struct ct_sweep_record {
	struct ct_key key;
	struct ct_value value;
	struct ct_value twin_value;
};

/* The agent's sweep with the judgement in the kernel too (bpf/ct_sweep.c's ct_sweep_keys): a test
 * run's packet is CT_SWEEP_PADDING bytes, a struct ct_sweep_args, then its `keys` conntrack keys
 * (up to CT_SWEEP_KEYS), then their values, both as the agent read them from the map. The program
 * judges each flow by the timeouts given and deletes the expired ones pair by pair; the values
 * read let it pass over a flow plainly alive without a lookup (a lookup marks an LRU entry
 * recently used). Its return value is the entries deleted, plus the entries judged expired that
 * woke before their delete times CT_SWEEP_SPARED. Timeouts in ns; now_ns: CLOCK_MONOTONIC, as
 * bpf_ktime_get_ns(). */
#define CT_SWEEP_KEYS 16   /* 14 + 72 + 16 * (40 + 112) bytes, within a test run's page */
#define CT_SWEEP_SPARED 65536
struct ct_sweep_args {
	__u64 now_ns;
	__u64 tcp_syn_sent_ns;
	__u64 tcp_established_ns;
	__u64 tcp_fin_ns;
	__u64 tcp_rst_ns;
	__u64 udp_ns;
	__u64 icmp_ns;
	__u64 generic_ns;
	__u64 keys;
};

/* loadBalancerSourceRanges: an LPM trie keyed (id, family, source prefix). prefixlen counts the
 * 32 bits of id and the 32 of family and pad too: a /24 range is prefixlen
 * SRC_RANGE_PREFIX_BASE + 24, an IPv6 /64 SRC_RANGE_PREFIX_BASE + 64. */
#define SRC_RANGE_PREFIX_BASE 64
struct src_range_key {
	__u32 prefixlen;
	__u32 id;
	__u8 family;
	__u8 pad[3];
	union {
		__u32 addr;      /* be */
		__u32 addr6[4];
	};
};

/* Per service-port counters; a per-CPU array indexed by service-port id. */
struct svc_counters {
	__u64 packets;
	__u64 bytes;
	__u64 connections;
};

/* Why a program dropped a packet: the key of the drops map (per CPU). */
#define DROP_NO_LOCAL_ENDPOINT 1    /* traffic policy Local, and no endpoint on this node */
#define DROP_NO_ENDPOINTS 2         /* --no-endpoints=drop, or a sender no ICMP error may go to */
#define DROP_FRAGMENT_TO_SERVICE 3  /* no L4 header to match a flow on */
#define DROP_NOT_L4_TO_SERVICE 4    /* a ping or another protocol to a ClusterIP */
#define DROP_SOURCE_RANGE 5         /* outside the service's loadBalancerSourceRanges */
#define DROP_NO_BACKEND 6           /* an empty backend slot: the writer's order forbids it */
#define DROP_NO_NAT_ADDRESS 7       /* no hairpin or node address in the config map */
#define DROP_NO_SNAT_PORT 8         /* every SNAT port towards the backend taken */
#define DROP_CT_CLASH 9             /* the reply tuple held by a live flow, or the conntrack write failed */
#define DROP_REWRITE_FAILED 10      /* a helper refused to rewrite or resize the packet */
#define DROP_NO_ROUTE 11            /* no route for a translated packet */
#define DROP_FRAG_NEEDED 12         /* forwarded past the stack, larger than the egress MTU (GSO: its
                                     * segments), and no frag-needed could be sent (no DF, or not one host) */
#define DROP_FRAGMENT_UNKNOWN 13    /* a later fragment to a service whose first fragment was not seen */
#define DROP_TTL_EXCEEDED 14        /* forwarded past the stack at TTL 1, and no time exceeded could be sent */
#define DROP_ICMP_RATE_LIMITED 15   /* an ICMP error the programs would send, over --icmp-rate/--icmp-burst */
#define DROP_NO_NEW_FLOW_PROGRAM 16 /* from_uplink's tail call to its new-flow program failed (none loaded) */
#define DROPS_MAX 17
struct drop_counters {
	__u64 packets;
	__u64 bytes;
};

/* Session affinity (sessionAffinity: ClientIP), per service port and client address, as kube-proxy
 * keeps it: each new connection within the timeout goes to the backend the client's last new
 * connection went to, and renews it. Three maps:
 *   affinity_svc  array by service-port id: the timeout; 0 = no affinity (the core's)
 *   affinity_be   the backends of the affinity service ports, with their ordinals (the core's):
 *                 an entry naming a backend not (or no longer) among the frontend's is ignored
 *   affinity      LRU hash (id, client) -> backend and when its last new connection came (the
 *                 programs'); the agent forgets the entries of backends and services that left */
struct affinity_svc {
	__u32 timeout_s;   /* 1..86400; 0 = off */
};

struct affinity_key {
	__u32 svc_id;
	union {
		__u32 client_addr;   /* be */
		__u32 client_addr6[4];
	};
	__u8 family;
	__u8 pad[3];
};

struct affinity_value {
	__u64 last_used_ns;  /* CLOCK_MONOTONIC, as ct_value's: the client's last new connection */
	union {
		__u32 backend_addr;  /* be */
		__u32 backend_addr6[4];
	};
	__u16 backend_port;  /* be */
	__u8 family;
	__u8 pad;
	__u32 pad2;
};

struct affinity_be_key {
	__u32 svc_id;
	union {
		__u32 addr;   /* be */
		__u32 addr6[4];
	};
	__u16 port;   /* be */
	__u8 family;
	__u8 pad;
};
/* affinity_be's value: the backend's ordinal (__u32), so a frontend that picks among the first n
 * (all, or the local ones) follows only an entry whose ordinal is below n. */

/* Single-entry array: what the agent tells the programs, and the layout version of the maps. */
struct config {
	__u32 layout_version;  /* EBPFLB_LAYOUT_VERSION of whoever created the maps */
	__u32 flags;           /* CFG_FLG_* */
	__u32 hairpin_addr;    /* be: source for a pod reaching itself through its service (IPv4) */
	__u32 node_addr;       /* be: this node's uplink address, the SNAT source towards remote backends (IPv4) */
	__u64 netns_cookie;    /* the agent's network namespace: the only one whose sockets bpf/sock.c
				* translates (0: none) */
	__u32 icmp_rate;       /* ICMP errors the programs send per second, node-wide (--icmp-rate) */
	__u32 icmp_burst;      /* and at most this many at once (--icmp-burst); the bucket starts full */
	__u32 hairpin_addr6[4];  /* be: hairpin_addr's IPv6 twin (all zero: none) */
	__u32 node_addr6[4];     /* be: node_addr's IPv6 twin (all zero: none) */
};

#define ICMP_RATE_DEFAULT 1000   /* as the kernel's net.ipv4.icmp_msgs_per_sec */
#define ICMP_BURST_DEFAULT 50    /* as net.ipv4.icmp_msgs_burst */

/* The programs' token bucket for the ICMP errors they send (bpf/icmp_reject.h), one per node,
 * shared by every CPU and program: credit grows by icmp_rate a second up to icmp_burst, each error
 * takes one. Only the programs write it. */
struct icmp_bucket {
	__u64 stamp_ns;   /* when credit was last added (bpf/clock.h) */
	__u64 credit;     /* errors that may go now; a signed count (CPUs racing may take it below 0) */
};

/* Host sockets (bpf/sock.c): a socket that connect() or sendto() pointed at a backend instead of
 * the frontend it asked for. recvmsg() and getpeername() report the frontend again (resolvers
 * check the answer's source), and the reaper finds connected UDP sockets on a backend that left.
 * Keyed by the socket's cookie and the backend. */
struct sock_rev_key {
	__u64 cookie;
	union {
		__u32 addr;     /* be: the backend */
		__u32 addr6[4];
	};
	__u16 port;     /* be */
	__u8 family;
	__u8 pad;
	__u32 pad2;
};

struct sock_rev_value {
	union {
		__u32 addr;     /* be: what the socket asked for (a frontend, or 127.x for a localhost NodePort) */
		__u32 addr6[4];
	};
	union {
		__u32 fe_addr;  /* be: the frontend found for it (= addr, or the node address for 127.x) */
		__u32 fe_addr6[4];
	};
	__u16 port;     /* be */
	__u8 proto;
	__u8 family;    /* of both addresses */
	__u32 svc_id;   /* the answer is translated only while the frontend still has this id */
};

/* A backend that left a service port: the reaper (bpf/sock_reaper.c) aborts connected UDP
 * sockets of this namespace that bpf/sock.c pointed at it for that port; the value counts them. */
struct sock_gone_key {
	__u32 svc_id;
	union {
		__u32 addr;     /* be */
		__u32 addr6[4];
	};
	__u16 port;     /* be */
	__u8 family;
	__u8 pad;
};
