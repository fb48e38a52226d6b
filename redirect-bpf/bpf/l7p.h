/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every struct that crosses the kernel/userspace boundary, in one place.
 *
 * redirect-bpf/src/layout.ts mirrors each struct byte for byte (offsets and sizes), and
 * test/redirect-bpf/layout.test.ts compares encoded keys with byte fixtures, so a change
 * here that is not made there fails a test. Padding is always explicit; the
 * _Static_asserts at the bottom pin the sizes.
 *
 * Byte order: addresses and ports are kept in NETWORK order wherever they are compared
 * with packet fields (CT, ipcache, policy port, udp orig), so the program never swaps.
 * Identities, endpoint ids and the config's ports are host order (little-endian here).
 */
#ifndef L7P_H
#define L7P_H

#include <linux/types.h>

/* Verdicts of policy entries (and of events). 0 is "no entry". */
enum l7p_verdict {
	L7P_VERDICT_NONE = 0,
	L7P_VERDICT_ALLOW = 1,
	L7P_VERDICT_DENY = 2,
	L7P_VERDICT_REDIRECT_HTTP = 3,
	L7P_VERDICT_REDIRECT_DNS = 4,
	L7P_VERDICT_AUDIT = 5, /* events only: policy would drop, the endpoint audits (passed) */
};

/*
 * Reasons: indexes of the per-CPU counter array and the `reason` of events. Keep in
 * step with REASONS in layout.ts (names are what `counters()` reports).
 */
enum l7p_reason {
	L7P_R_NEW_ALLOWED = 0,       /* new flow allowed by policy */
	L7P_R_NEW_REDIRECT_HTTP = 1, /* new flow assigned to the HTTP proxy */
	L7P_R_NEW_REDIRECT_DNS = 2,  /* new flow assigned to the DNS proxy */
	L7P_R_NEW_FROM_HOST = 3,     /* new flow from the host into an endpoint (allowed) */
	L7P_R_DROP_POLICY = 4,       /* no entry matched: default deny */
	L7P_R_DROP_POLICY_DENY = 5,  /* a deny entry matched */
	L7P_R_DROP_NO_SOCKET = 6,    /* redirect, but no proxy socket: fail closed */
	L7P_R_DROP_FRAGMENT = 7,     /* IPv4 fragment (no L4 header to check) */
	L7P_R_DROP_IPV6 = 8,         /* IPv6 other than ICMPv6 (not enforced: dropped) */
	L7P_R_DROP_MALFORMED = 9,    /* truncated header */
	L7P_R_DROP_SPOOFED = 10,     /* endpoint sent with a source address not its own */
	L7P_R_DROP_REDIRECT_EGRESS = 11, /* redirect decided at tc egress (cannot assign) */
	L7P_R_DROP_UNSUPPORTED_L4 = 12,  /* redirect verdict for a protocol without sockets */
	L7P_R_CT_PASS = 13,          /* packet of a tracked flow (forward or reply) */
	L7P_R_CT_REDIRECT = 14,      /* packet of a tracked redirected flow, assigned */
	L7P_R_EVENTS_LOST = 15,      /* ring buffer full: event not delivered */
	L7P_R_HOST_BYPASS = 16,      /* passed packet put straight into a local endpoint (L7P_FEAT_HOST_ROUTING) */
	L7P_R_AUDIT_POLICY = 17,     /* default deny would drop; the endpoint audits: passed */
	L7P_R_AUDIT_POLICY_DENY = 18, /* a deny entry would drop; the endpoint audits: passed */
	L7P_R_MAX = 19,
};
/*
 * Slots of l7p_counters: more than there are reasons, so that a new reason does not change
 * the map's shape (a pinned map is reused by an upgrade only when its shape is the same).
 */
#define L7P_COUNTER_SLOTS 32
_Static_assert(L7P_R_MAX <= L7P_COUNTER_SLOTS, "l7p_counters has a slot per reason");

/* Direction, as seen from the endpoint whose policy is looked up (== policy-store DIR). */
#define L7P_DIR_INGRESS 0
#define L7P_DIR_EGRESS 1

#define L7P_MARK_TO_PROXY 0x200
/*
 * Set by from_workload on a packet it let through (a tracked flow, or a new flow whose egress
 * and ingress were both checked there), so that to_workload on the destination's veth, which
 * would only find the same conntrack entry again, returns at once. The mark never leaves the
 * host namespace: crossing into the workload's namespace clears it (skb_scrub_packet).
 */
#define L7P_MARK_PASSED 0x300
/*
 * SO_MARK of the proxies' own TCP sockets (the transparent listener, inherited by every accepted
 * connection, and the upstream connections). to_workload lets their segments that carry no SYN,
 * FIN or RST through without conntrack: the flow was checked and tracked when it opened, the
 * workload's own segments keep the entry fresh, and the ones that change its state still pass
 * through it. Only root (CAP_NET_ADMIN) can set a socket mark, and marks do not cross namespaces.
 * An upstream connection carries it from its SYN on: to_workload on an endpoint's veth or an
 * uplink records the flow as L7P_CT_PROXY_UPSTREAM, so that its replies, which may be addressed
 * to a workload (the proxy keeps the client's source address), are handed to the proxy socket.
 */
#define L7P_MARK_PROXY 0x400
#define L7P_MARK_MASK 0xf00

#define L7P_WORLD_ID 2
#define L7P_HOST_ID 1

/*
 * l7p_config (array, 1 entry). Written by the loader at open; read by both programs for
 * the proxy ports and the features. route_table and flags are the loader's own bookkeeping
 * (what it installed, so uninstall removes only that); prog_tag identifies the loaded object.
 */
struct l7p_config {
	__u16 proxy_port;     /* host order */
	__u16 dns_proxy_port; /* host order */
	__u32 route_table;
	__u32 flags;          /* L7P_CFG_* */
	__u32 features;       /* L7P_FEAT_* */
	__u64 prog_tag;
};
#define L7P_CFG_MADE_RULE 1
#define L7P_CFG_MADE_ROUTE 2
/*
 * A packet that from_workload lets through to a local endpoint goes straight into that
 * endpoint's namespace (bpf_fib_lookup for the next hop, bpf_redirect_peer) instead of
 * through the host's IP stack: Cilium's "BPF host routing". Off: the host routes it.
 */
#define L7P_FEAT_HOST_ROUTING 1

/*
 * l7p_endpoints (hash): host-side ifindex -> local endpoint. Written by the agent from the
 * snapshot; read by both programs: the interface a packet enters on names its source
 * endpoint (from_workload) or its destination endpoint (to_workload).
 */
struct l7p_endpoint {
	__u32 identity;
	__u32 ipv4;        /* network order; a packet from the veth with another source is dropped */
	__u16 endpoint_id;
	__u16 flags;       /* L7P_EP_* */
};
/*
 * The endpoint is in policy audit mode: a new flow its policy would drop (default deny or a
 * deny entry) passes, tracked with L7P_CT_AUDIT, and is reported with verdict AUDIT and the
 * reason that would have dropped it. Set on the endpoint and on its ipcache /32, so that
 * either end's lookup knows it.
 */
#define L7P_EP_AUDIT 1

/*
 * l7p_attach (hash): ifindex -> what the loader attached there. Loader bookkeeping only
 * (the programs never read it): full syncs detach what is no longer wanted and
 * uninstall removes exactly this.
 */
struct l7p_attach {
	__u8 hooks;        /* L7P_HOOK_* */
	__u8 made_qdisc;   /* 1 when the loader created the clsact qdisc */
	__u16 pad;
};
#define L7P_HOOK_INGRESS 1
#define L7P_HOOK_EGRESS 2

/*
 * l7p_ipcache (LPM trie): IPv4 prefix -> identity (+ endpoint id for local endpoints).
 * Written by the agent; read by the programs (peer identity, is the destination local)
 * and by the proxies through Datapath.lookupIdentity. A miss means world (2).
 */
struct l7p_ipcache_key {
	__u32 prefixlen;   /* 0..32 */
	__u32 addr;        /* network order */
};
struct l7p_ipcache_value {
	__u32 identity;
	__u16 endpoint_id; /* 0 unless a local endpoint's /32 */
	__u16 flags;       /* L7P_EP_* of that local endpoint, else 0 */
};

/*
 * ICMP (protocol 1) entries carry the ICMP type as their port, offset so that type 0
 * (echo reply) is not port 0, which means "any port": port = L7P_ICMP_PORT_BASE | type.
 * Cilium too keys ICMP types as ports (pkg/policy/api/icmp.go, ICMPField.PortProtocol).
 */
#define L7P_ICMP_PORT_BASE 0x100

/*
 * l7p_policy (LPM trie): one trie for every endpoint. The first 64 bits of data
 * (endpoint, direction, protocol, identity) are always matched in full; the port is
 * matched by prefix (big-endian so its high bits come first), which is how a port range
 * is stored (split into at most 30 prefixes) and how "any port" is stored (port prefix 0).
 * The program resolves the policy-store's 6-step first-match order with four lookups
 * (see policy_lookup in warden.bpf.c). Identity 0 = any identity; protocol 0 = any.
 */
struct l7p_policy_key {
	__u32 prefixlen;   /* 64 + port prefix length (0..16) */
	__u16 endpoint_id;
	__u8 direction;
	__u8 protocol;
	__u32 identity;
	__u16 port;        /* network order */
	__u16 pad;
};
struct l7p_policy_value {
	__u8 verdict;      /* enum l7p_verdict */
	__u8 port_plen;    /* port prefix length of this entry: 0 = any port */
	__u16 pad;
	__u32 cookie;      /* reserved (rule reference); 0 today */
};

/*
 * l7p_ct (LRU hash): connection tracking, one entry per flow keyed by the tuple of its
 * first packet; replies are found by looking the reversed tuple up. Written by the
 * programs; read by the agent (hasConnection). ICMP echo uses the echo id as both ports.
 */
struct l7p_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;       /* network order */
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};
struct l7p_ct_entry {
	__u64 expires;     /* bpf_ktime_get_ns() deadline (CLOCK_MONOTONIC) */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 endpoint_id; /* the enforcing endpoint (source if local, else destination) */
	__u16 flags;       /* L7P_CT_* */
	__u32 pad2;
};
#define L7P_CT_REDIRECT 1
#define L7P_CT_REDIRECT_DNS 2
#define L7P_CT_CLOSING 4
#define L7P_CT_FROM_HOST 8
#define L7P_CT_REPLIED 16
/* The flow's source / destination is a local endpoint (set by from_workload when it creates
 * the entry): where host routing may put a packet of the flow straight into the endpoint. */
#define L7P_CT_SRC_LOCAL 32
#define L7P_CT_DST_LOCAL 64
/* A proxy's upstream flow (opened by a socket with L7P_MARK_PROXY): its replies belong to the
 * proxy socket that owns the tuple, never to the endpoint whose address it may carry as source. */
#define L7P_CT_PROXY_UPSTREAM 128
/* Let through by audit mode: policy would have dropped the flow's first packet. */
#define L7P_CT_AUDIT 256

/*
 * l7p_fib (LRU hash): what bpf_fib_lookup answered for a destination, kept for a second so
 * that host routing (L7P_FEAT_HOST_ROUTING) does not walk the routing rules and tables for
 * every packet. Keyed by the ingress interface too, which stands for the source (an
 * endpoint's veth), so that source-based rules are honoured as the stack would. The
 * programs' own cache; userspace never reads it.
 */
struct l7p_fib_key {
	__u32 daddr;       /* network order */
	__u32 ifindex;     /* ingress */
};
struct l7p_fib_value {
	__u64 expires;     /* coarse CLOCK_MONOTONIC ns */
	__u32 ifindex;     /* egress: the destination endpoint's host-side veth */
	__u8 dmac[6];
	__u8 smac[6];
	__u16 mtu;         /* the route's MTU (host order) */
};


/* One ring buffer record (l7p_events): every drop and every new allowed/redirected flow. */
struct l7p_event {
	__u64 ts;          /* bpf_ktime_get_ns() */
	__u32 saddr;       /* network order */
	__u32 daddr;
	__u16 sport;       /* network order */
	__u16 dport;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u16 endpoint_id;
	__u8 proto;
	__u8 verdict;      /* enum l7p_verdict (DENY for every drop, AUDIT for a would-be drop) */
	__u8 reason;       /* enum l7p_reason */
	__u8 direction;    /* L7P_DIR_* of the deciding lookup, 0xff when none */
	__u16 pad;
};

_Static_assert(sizeof(struct l7p_config) == 24, "l7p_config");
_Static_assert(sizeof(struct l7p_endpoint) == 12, "l7p_endpoint");
_Static_assert(sizeof(struct l7p_attach) == 4, "l7p_attach");
_Static_assert(sizeof(struct l7p_ipcache_key) == 8, "l7p_ipcache_key");
_Static_assert(sizeof(struct l7p_ipcache_value) == 8, "l7p_ipcache_value");
_Static_assert(sizeof(struct l7p_policy_key) == 16, "l7p_policy_key");
_Static_assert(sizeof(struct l7p_policy_value) == 8, "l7p_policy_value");
_Static_assert(sizeof(struct l7p_ct_key) == 16, "l7p_ct_key");
_Static_assert(sizeof(struct l7p_ct_entry) == 24, "l7p_ct_entry");
_Static_assert(sizeof(struct l7p_event) == 40, "l7p_event");
_Static_assert(sizeof(struct l7p_fib_key) == 8, "l7p_fib_key");
_Static_assert(sizeof(struct l7p_fib_value) == 32, "l7p_fib_value");

#endif /* L7P_H */
