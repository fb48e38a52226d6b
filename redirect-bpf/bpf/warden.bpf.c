// SPDX-License-Identifier: Apache-2.0
/*
 * warden's tc datapath. Two programs, pinned once and attached to many interfaces:
 *
 *  from_workload  tc ingress of every endpoint's host-side veth (traffic leaving a workload)
 *                 and of each uplink (traffic from outside the node). Enforces the source
 *                 endpoint's egress and the destination endpoint's ingress policy for new
 *                 flows, tracks them, and assigns redirected flows to the proxy sockets.
 *  to_workload    tc egress of every endpoint's host-side veth (traffic into a workload).
 *                 Flows from the host (proxies' upstreams, host processes) never passed
 *                 from_workload: this creates their CT entry so the workload's replies pass.
 *
 * Ports are read for TCP, UDP and SCTP; ICMP echo uses its id. Non-IPv4: ARP and ICMPv6
 * pass (neighbour discovery); other IPv6 is dropped, since no policy is enforced for it. IPv4
 * fragments are dropped (no ports to check).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "l7p.h"

#define NS_PER_SEC 1000000000ULL
/* Lifetimes as Cilium's defaults (bpf/lib/conntrack.h): established TCP 6 h, closing 10 s,
 * SYN and non-TCP 60 s. */
#define CT_LIFETIME_TCP (21600 * NS_PER_SEC)
#define CT_LIFETIME_SYN (60 * NS_PER_SEC)
#define CT_LIFETIME_CLOSE (10 * NS_PER_SEC)
#define CT_LIFETIME_OTHER (60 * NS_PER_SEC)
/* Refresh an entry's deadline at most this often (each refresh is a map write). */
#define CT_REFRESH_SLACK (1 * NS_PER_SEC)

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif
#define IPPROTO_ICMPV6_NUM 58
#define L7P_AF_INET 2 /* AF_INET: <sys/socket.h> is libc's, and the build has no libc */

/* The ICMP header's first 8 bytes for echo messages (RFC 792). <linux/icmp.h> would do,
 * but it pulls in <linux/if.h>, which includes libc's <sys/socket.h>. */
struct l7p_icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};
#define L7P_ICMP_ECHOREPLY 0
#define L7P_ICMP_ECHO 8

/*
 * The SCTP common header (RFC 9260 section 3.1): the ports sit where UDP's do. The policy store
 * accepts SCTP port rules, so the program must read them: without the ports an SCTP packet would
 * only ever match the any-port entries, and a deny on one port under a broader allow would not
 * apply. No kernel header is used: <linux/sctp.h> is not needed for 12 bytes.
 */
struct l7p_sctp_common {
	__be16 source;
	__be16 dest;
	__be32 vtag;
	__le32 checksum;
};

/* Loader-written knobs (proxy ports). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l7p_config);
} l7p_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct l7p_endpoint);
} l7p_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct l7p_attach);
} l7p_attach SEC(".maps");

/*
 * max_entries here is a placeholder: the loader creates the map at the configured size
 * (--ipcache-max-entries) and the load reuses it (redirect-bpf/src/loader.ts prepareIpcache).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l7p_ipcache_key);
	__type(value, struct l7p_ipcache_value);
} l7p_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l7p_policy_key);
	__type(value, struct l7p_policy_value);
} l7p_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct l7p_ct_key);
	__type(value, struct l7p_ct_entry);
} l7p_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct l7p_fib_key);
	__type(value, struct l7p_fib_value);
} l7p_fib SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} l7p_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L7P_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} l7p_counters SEC(".maps");

/* What the parser and the policy code pass around for one packet. */
struct pkt {
	struct l7p_ct_key tuple;  /* as seen on the wire */
	__u16 dport_host;         /* policy port (host order): the destination port; ICMP:
	                           * L7P_ICMP_PORT_BASE | type; 0 for other protocols */
	__u8 tcp_flags;           /* TCP: byte 13 of the header */
	__u8 is_new_syn;          /* TCP SYN without ACK */
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/*
 * Conntrack's clock: CLOCK_MONOTONIC at tick resolution (the agent compares deadlines with
 * CLOCK_MONOTONIC). A tick is nothing next to the lifetimes, and reading the coarse clock
 * costs less than a clocksource read, on every packet of every flow.
 */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void mark_passed(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~L7P_MARK_MASK) | L7P_MARK_PASSED;
}

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&l7p_counters, &reason);

	if (c)
		*c += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline struct l7p_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&l7p_config, &zero);
}

static __always_inline void send_event(struct __sk_buff *skb, const struct pkt *p, __u32 src_id,
				       __u32 dst_id, __u16 ep, __u8 verdict, __u8 reason, __u8 dir)
{
	struct l7p_event *e;

	e = bpf_ringbuf_reserve(&l7p_events, sizeof(*e), 0);
	if (!e) {
		count(L7P_R_EVENTS_LOST);
		return;
	}
	e->ts = bpf_ktime_get_ns();
	e->saddr = p->tuple.saddr;
	e->daddr = p->tuple.daddr;
	e->sport = p->tuple.sport;
	e->dport = p->tuple.dport;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->ifindex = skb->ifindex;
	e->endpoint_id = ep;
	e->proto = p->tuple.proto;
	e->verdict = verdict;
	e->reason = reason;
	e->direction = dir;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void emit(struct __sk_buff *skb, const struct pkt *p, __u32 src_id,
				 __u32 dst_id, __u16 ep, __u8 verdict, __u8 reason, __u8 dir)
{
	count(reason);
	send_event(skb, p, src_id, dst_id, ep, verdict, reason, dir);
}

/*
 * Policy would drop a new flow (`reason`: default deny or a deny entry) but the deciding
 * endpoint audits: counted as an audit verdict, not a drop, and reported with the reason
 * that would have dropped it. The caller lets the flow through.
 */
static __always_inline void audit(struct __sk_buff *skb, const struct pkt *p, __u32 src_id,
				  __u32 dst_id, __u16 ep, __u8 reason, __u8 dir)
{
	count(reason == L7P_R_DROP_POLICY_DENY ? L7P_R_AUDIT_POLICY_DENY : L7P_R_AUDIT_POLICY);
	send_event(skb, p, src_id, dst_id, ep, L7P_VERDICT_AUDIT, reason, dir);
}

static __always_inline int drop(struct __sk_buff *skb, const struct pkt *p, __u32 src_id,
				__u32 dst_id, __u16 ep, __u8 reason, __u8 dir)
{
	emit(skb, p, src_id, dst_id, ep, L7P_VERDICT_DENY, reason, dir);
	return TC_ACT_SHOT;
}

/*
 * Endpoint `ep`'s policy has no entry for a new flow, or a deny entry (`v`): the flow is
 * dropped (TC_ACT_SHOT), or, when `ep` audits (`flags`), reported as audit and the caller goes
 * on with it as allowed by this end (0).
 */
static __always_inline int refuse(struct __sk_buff *skb, const struct pkt *p, __u32 src_id,
				  __u32 dst_id, __u16 ep, __u8 v, __u16 flags, __u8 dir)
{
	__u8 why = v == L7P_VERDICT_NONE ? L7P_R_DROP_POLICY : L7P_R_DROP_POLICY_DENY;

	if (!(flags & L7P_EP_AUDIT))
		return drop(skb, p, src_id, dst_id, ep, why, dir);
	audit(skb, p, src_id, dst_id, ep, why, dir);
	return 0;
}

/*
 * Parse Ethernet + IPv4 + L4 into p. Returns 0 to enforce, 1 to pass the packet untouched
 * (not IP, ICMPv6), or a negative l7p_reason to drop.
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 ihl;

	if ((void *)(eth + 1) > data_end)
		return 1;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		/* nexthdr is byte 6 of the IPv6 header */
		__u8 *nh = (void *)(eth + 1) + 6;

		if ((void *)(nh + 1) > data_end)
			return -L7P_R_DROP_MALFORMED;
		return *nh == IPPROTO_ICMPV6_NUM ? 1 : -L7P_R_DROP_IPV6;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return -L7P_R_DROP_MALFORMED;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -L7P_R_DROP_MALFORMED;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -L7P_R_DROP_FRAGMENT;

	__builtin_memset(p, 0, sizeof(*p));
	p->tuple.saddr = ip->saddr;
	p->tuple.daddr = ip->daddr;
	p->tuple.proto = ip->protocol;

	void *l4 = (void *)ip + ihl;

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -L7P_R_DROP_MALFORMED;
		p->tuple.sport = th->source;
		p->tuple.dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->is_new_syn = (p->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN;
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -L7P_R_DROP_MALFORMED;
		p->tuple.sport = uh->source;
		p->tuple.dport = uh->dest;
		break;
	}
	case IPPROTO_SCTP: {
		struct l7p_sctp_common *sh = l4;

		if ((void *)(sh + 1) > data_end)
			return -L7P_R_DROP_MALFORMED;
		p->tuple.sport = sh->source;
		p->tuple.dport = sh->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct l7p_icmp_echo *ih = l4;

		if ((void *)(ih + 1) > data_end)
			return -L7P_R_DROP_MALFORMED;
		/* echo request/reply share the id: use it as both ports so a reply's
		 * reversed tuple equals the request's. Other types are flows of their own
		 * type, so that one allowed type never lets another through conntrack. */
		if (ih->type == L7P_ICMP_ECHO || ih->type == L7P_ICMP_ECHOREPLY) {
			p->tuple.sport = ih->id;
			p->tuple.dport = ih->id;
		} else {
			p->tuple.dport = bpf_htons(L7P_ICMP_PORT_BASE | ih->type);
		}
		/* `icmps` rules are policy entries whose port is the type (see l7p.h) */
		p->dport_host = L7P_ICMP_PORT_BASE | ih->type;
		return 0;
	}
	default:
		return 0;
	}
	p->dport_host = bpf_ntohs(p->tuple.dport);
	return 0;
}

static __always_inline struct l7p_ipcache_value *ipcache_lookup(__u32 addr)
{
	struct l7p_ipcache_key k = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&l7p_ipcache, &k);
}

/*
 * The policy-store's first-match order (policy-store/src/types.ts, KernelEntry):
 *   1 (id, proto, port)  2 (ANY, proto, port)  3 (id, proto, ANY port)
 *   4 (ANY, proto, ANY)  5 (id, ANY, ANY)      6 (ANY, ANY, ANY)
 * One LPM lookup per (identity, proto) returns the longest port match, which is a
 * specific port or range (steps 1/2) or the any-port entry (steps 3/4).
 */
static __always_inline __u8 policy_lookup(__u16 ep, __u8 dir, __u32 id, __u8 proto, __u16 port)
{
	struct l7p_policy_key k = {
		.prefixlen = 64 + 16, .endpoint_id = ep, .direction = dir,
		.protocol = proto, .identity = id, .port = bpf_htons(port),
	};
	struct l7p_policy_value *v1, *v2, *v;

	v1 = bpf_map_lookup_elem(&l7p_policy, &k);
	if (v1 && v1->port_plen > 0)
		return v1->verdict;
	k.identity = 0;
	v2 = bpf_map_lookup_elem(&l7p_policy, &k);
	if (v2 && v2->port_plen > 0)
		return v2->verdict;
	if (v1)
		return v1->verdict;
	if (v2)
		return v2->verdict;
	k.protocol = 0;
	k.port = 0;
	k.identity = id;
	v = bpf_map_lookup_elem(&l7p_policy, &k);
	if (v)
		return v->verdict;
	k.identity = 0;
	v = bpf_map_lookup_elem(&l7p_policy, &k);
	if (v)
		return v->verdict;
	return L7P_VERDICT_NONE;
}

static __always_inline __u64 lifetime(const struct pkt *p, __u16 flags)
{
	if (p->tuple.proto != IPPROTO_TCP)
		return CT_LIFETIME_OTHER;
	if (flags & L7P_CT_CLOSING)
		return CT_LIFETIME_CLOSE;
	if (flags & L7P_CT_REPLIED)
		return CT_LIFETIME_TCP;
	return CT_LIFETIME_SYN;
}

/* Update a live entry for one more packet; is_reply tells which way it went. */
static __always_inline void ct_touch(struct l7p_ct_entry *e, const struct pkt *p, __u64 now, int is_reply)
{
	__u16 flags = e->flags;

	if (p->tuple.proto == IPPROTO_TCP && (p->tcp_flags & (TCPF_FIN | TCPF_RST)))
		flags |= L7P_CT_CLOSING;
	if (is_reply)
		flags |= L7P_CT_REPLIED;
	__u64 deadline = now + lifetime(p, flags);

	if (flags != e->flags)
		e->flags = flags;
	/* shorten at once on close; extend only when it moved by more than the slack */
	if ((flags & L7P_CT_CLOSING) ? deadline < e->expires : deadline > e->expires + CT_REFRESH_SLACK)
		e->expires = deadline;
}

/*
 * A tracked flow: returns the entry and sets *is_reply. Expired entries count as absent;
 * a TCP SYN on a closing/expired tuple starts a new flow (port reuse).
 */
static __always_inline struct l7p_ct_entry *ct_lookup(const struct pkt *p, __u64 now, int *is_reply)
{
	struct l7p_ct_entry *e;
	struct l7p_ct_key rev = {
		.saddr = p->tuple.daddr, .daddr = p->tuple.saddr,
		.sport = p->tuple.dport, .dport = p->tuple.sport, .proto = p->tuple.proto,
	};

	e = bpf_map_lookup_elem(&l7p_ct, &p->tuple);
	if (e && e->expires > now && !(p->is_new_syn && (e->flags & L7P_CT_CLOSING))) {
		*is_reply = 0;
		return e;
	}
	e = bpf_map_lookup_elem(&l7p_ct, &rev);
	if (e && e->expires > now) {
		*is_reply = 1;
		return e;
	}
	return 0;
}

static __always_inline void ct_create(const struct pkt *p, __u64 now, __u32 src_id, __u32 dst_id,
				      __u16 ep, __u16 flags)
{
	struct l7p_ct_entry e = {
		.expires = now + lifetime(p, flags), .src_identity = src_id,
		.dst_identity = dst_id, .endpoint_id = ep, .flags = flags,
	};

	bpf_map_update_elem(&l7p_ct, &p->tuple, &e, BPF_ANY);
}

/* The packet's tuple as the socket lookups take it. */
static __always_inline void sock_tuple(struct bpf_sock_tuple *t, const struct pkt *p)
{
	t->ipv4.saddr = p->tuple.saddr;
	t->ipv4.daddr = p->tuple.daddr;
	t->ipv4.sport = p->tuple.sport;
	t->ipv4.dport = p->tuple.dport;
}

/*
 * Assign the packet to a proxy socket in this (the host's) network namespace: first the
 * socket that owns the packet's own tuple (an established proxy connection), then the
 * listener on the proxy port. Returns 0 when assigned, -1 when no socket (fail closed).
 * is_reply: the packet is a reply of a redirected flow (server -> proxy upstream socket);
 * only the own-tuple socket is acceptable then.
 */
static __always_inline int assign_to_proxy(struct __sk_buff *skb, const struct pkt *p, __u16 port, int is_reply)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long err;

	sock_tuple(&t, p);
	if (p->tuple.proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			/* a host listener on the original port is not ours; a TIME_WAIT
			 * socket gives way to the listener (a new SYN) */
			if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT)
				goto assign;
			bpf_sk_release(sk);
		}
		if (is_reply || port == 0)
			return -1;
		t.ipv4.dport = bpf_htons(port);
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	} else if (p->tuple.proto == IPPROTO_UDP) {
		/* no own-tuple lookup: a host service bound to the original port would match */
		if (is_reply || port == 0)
			return -1;
		t.ipv4.dport = bpf_htons(port);
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
	} else {
		return -1;
	}
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = (skb->mark & ~L7P_MARK_MASK) | L7P_MARK_TO_PROXY;
	return 0;
}

/*
 * A reply of a proxy's upstream flow (L7P_CT_PROXY_UPSTREAM): assign it to the socket that owns
 * its tuple, which must be bound to the reply's destination address itself (a transparent
 * socket bound to the client's address; a wildcard-bound host socket is not the proxy's). Found
 * or not, the packet is marked for local delivery: it is addressed to the client, but it belongs
 * to the proxy, and the workload that has the address must never see it. Without a socket (the
 * proxy closed) the host's stack drops it.
 */
static __always_inline int assign_to_upstream(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk = 0;

	sock_tuple(&t, p);
	if (p->tuple.proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && (sk->state == BPF_TCP_LISTEN || sk->src_ip4 != p->tuple.daddr)) {
			bpf_sk_release(sk);
			sk = 0;
		}
	} else if (p->tuple.proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->src_ip4 != p->tuple.daddr) {
			bpf_sk_release(sk);
			sk = 0;
		}
	}
	if (sk) {
		bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
	}
	skb->mark = (skb->mark & ~L7P_MARK_MASK) | L7P_MARK_TO_PROXY;
	return TC_ACT_OK;
}

static __always_inline __u16 proxy_port_for(__u8 verdict)
{
	struct l7p_config *cfg = config();

	if (!cfg)
		return 0;
	return verdict == L7P_VERDICT_REDIRECT_DNS ? cfg->dns_proxy_port : cfg->proxy_port;
}

/* How long a bpf_fib_lookup answer is used (l7p_fib). The kernel's own neighbour entries
 * stay valid for tens of seconds without confirmation; a route or MAC change shows within this. */
#define FIB_CACHE_NS (1 * NS_PER_SEC)

static __always_inline long fib_ask(struct __sk_buff *skb, struct bpf_fib_lookup *fib,
				    const struct iphdr *ip, __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = L7P_AF_INET;
	fib->tos = ip->tos;
	fib->l4_protocol = ip->protocol;
	fib->tot_len = tot_len;
	fib->ipv4_src = ip->saddr;
	fib->ipv4_dst = ip->daddr;
	fib->ifindex = skb->ifindex;
	/* the full lookup, rules included: an operator's policy routing applies as on the stack */
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
}

/*
 * Where to put a packet for daddr that entered on ifindex: bpf_fib_lookup's next hop and
 * MAC addresses, and the route's MTU (asked with a length no route takes), cached for
 * FIB_CACHE_NS. 0 when it cannot be settled here: no neighbour entry yet, forwarding off on
 * the ingress interface, a packet over the MTU (the stack sends the ICMP error), ... Those
 * go through the stack, which knows what to do. A GSO packet is not checked against the
 * MTU: its segments were cut to the MSS of the same MTU (Cilium's local delivery does the same).
 */
static __always_inline struct l7p_fib_value *next_hop(struct __sk_buff *skb, struct iphdr *ip, __u64 now)
{
	struct l7p_fib_key k = { .daddr = ip->daddr, .ifindex = skb->ifindex };
	struct l7p_fib_value *v = bpf_map_lookup_elem(&l7p_fib, &k);

	if (!v || v->expires <= now) {
		struct bpf_fib_lookup fib;
		struct l7p_fib_value nv = { .expires = now + FIB_CACHE_NS, .mtu = 0xffff };

		if (fib_ask(skb, &fib, ip, 0) != BPF_FIB_LKUP_RET_SUCCESS)
			return 0;
		nv.ifindex = fib.ifindex;
		__builtin_memcpy(nv.dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(nv.smac, fib.smac, ETH_ALEN);
		if (fib_ask(skb, &fib, ip, 0xffff) == BPF_FIB_LKUP_RET_FRAG_NEEDED)
			nv.mtu = fib.mtu_result;
		bpf_map_update_elem(&l7p_fib, &k, &nv, BPF_ANY);
		v = bpf_map_lookup_elem(&l7p_fib, &k);
		if (!v)
			return 0;
	}
	if (skb->gso_segs <= 1 && bpf_ntohs(ip->tot_len) > v->mtu)
		return 0;
	return v;
}

/*
 * A packet from_workload let through: when it is for a local endpoint and host routing is
 * on, put it into that endpoint's namespace at once (bpf_redirect_peer), doing what the
 * host's forwarding would do: the next hop and its MAC addresses (next_hop), TTL - 1.
 * Every case that cannot be settled here (see next_hop; TTL 1; a next hop that is not the
 * veth of an endpoint with this address) goes through the host's stack as before.
 * Skipped on this path: the host's input and forwarding path with its netfilter hooks, a
 * second pass through the backlog queue, and to_workload, which would only find the mark
 * from_workload set.
 */
static __always_inline int pass_local(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
	struct l7p_config *cfg = config();
	struct l7p_fib_value *hop;
	struct l7p_endpoint *ep;
	void *data, *data_end;
	struct iphdr *ip;
	__u8 hdr[ETH_HLEN + 12]; /* Ethernet header and IPv4 up to the checksum */
	__u32 check, out;

	if (!cfg || !(cfg->features & L7P_FEAT_HOST_ROUTING))
		return TC_ACT_OK;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
		return TC_ACT_OK;
	hop = next_hop(skb, ip, now);
	if (!hop)
		return TC_ACT_OK;
	out = hop->ifindex;
	ep = bpf_map_lookup_elem(&l7p_endpoints, &out);
	if (!ep || ep->ipv4 != p->tuple.daddr)
		return TC_ACT_OK;

	/* the helpers above may have moved the data: find the headers again */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + sizeof(hdr) > data_end)
		return TC_ACT_OK;
	__builtin_memcpy(hdr, data, sizeof(hdr));
	__builtin_memcpy(hdr, hop->dmac, ETH_ALEN);
	__builtin_memcpy(hdr + ETH_ALEN, hop->smac, ETH_ALEN);
	ip = (void *)(hdr + ETH_HLEN);
	/* ip_decrease_ttl's incremental checksum (RFC 1624): TTL is the high byte of its word */
	check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	/* one helper write instead of direct writes: those would make the verifier unclone
	 * every packet this program sees, not just the ones taking this path. It fails only
	 * before writing (no memory to unclone): the stack can still take the packet as it is. */
	if (bpf_skb_store_bytes(skb, 0, hdr, sizeof(hdr), 0))
		return TC_ACT_OK;
	count(L7P_R_HOST_BYPASS);
	return bpf_redirect_peer(out, 0);
}

/* Packet of a tracked flow. */
static __always_inline int ct_pass(struct __sk_buff *skb, struct pkt *p, struct l7p_ct_entry *e,
				   __u64 now, int is_reply, int can_assign)
{
	ct_touch(e, p, now, is_reply);
	if ((e->flags & L7P_CT_PROXY_UPSTREAM) && can_assign) {
		/* The proxy's own packets are sent by this host and never enter here: one that
		 * does was sent by a workload or from outside with the proxy's tuple, and would be
		 * taken into the proxy's connection without a policy decision. */
		if (!is_reply)
			return drop(skb, p, e->src_identity, e->dst_identity, e->endpoint_id, L7P_R_DROP_SPOOFED, 0xff);
		count(L7P_R_CT_PASS);
		return assign_to_upstream(skb, p);
	}
	if (!(e->flags & L7P_CT_REDIRECT) || !can_assign) {
		count(L7P_R_CT_PASS);
		mark_passed(skb);
		if (can_assign && (e->flags & (is_reply ? L7P_CT_SRC_LOCAL : L7P_CT_DST_LOCAL)))
			return pass_local(skb, p, now);
		return TC_ACT_OK;
	}
	__u8 verdict = (e->flags & L7P_CT_REDIRECT_DNS) ? L7P_VERDICT_REDIRECT_DNS : L7P_VERDICT_REDIRECT_HTTP;

	/* A UDP datagram keeps its addresses: the DNS proxy reads the server it was sent to
	 * from IP_ORIGDSTADDR, so nothing is recorded here. */
	if (assign_to_proxy(skb, p, proxy_port_for(verdict), is_reply) == 0) {
		count(L7P_R_CT_REDIRECT);
		return TC_ACT_OK;
	}
	if (is_reply) {
		/* a reply of a redirected flow with no proxy socket owning it: let the
		 * stack deliver it (the peer answers with a reset) */
		count(L7P_R_CT_PASS);
		return TC_ACT_OK;
	}
	return drop(skb, p, e->src_identity, e->dst_identity, e->endpoint_id, L7P_R_DROP_NO_SOCKET, 0xff);
}

SEC("tc")
int from_workload(struct __sk_buff *skb)
{
	struct pkt p;
	int r = parse(skb, &p);

	if (r == 1)
		return TC_ACT_OK;
	if (r < 0) {
		__builtin_memset(&p, 0, sizeof(p));
		return drop(skb, &p, 0, 0, 0, -r, 0xff);
	}

	__u64 now = ct_now();
	__u32 ifindex = skb->ifindex;
	struct l7p_endpoint *src_ep = bpf_map_lookup_elem(&l7p_endpoints, &ifindex);
	__u32 src_id = L7P_WORLD_ID, dst_id = L7P_WORLD_ID;
	__u16 src_epid = 0, dst_epid = 0, src_flags = 0, dst_flags = 0;
	struct l7p_ipcache_value *ipc;
	int is_reply = 0;
	struct l7p_ct_entry *e;

	if (src_ep) {
		src_id = src_ep->identity;
		src_epid = src_ep->endpoint_id;
		src_flags = src_ep->flags;
		if (p.tuple.saddr != src_ep->ipv4)
			return drop(skb, &p, src_id, 0, src_epid, L7P_R_DROP_SPOOFED, L7P_DIR_EGRESS);
		/* a tracked flow needs no identity: skip the ipcache (LPM) lookups */
		e = ct_lookup(&p, now, &is_reply);
		if (e)
			return ct_pass(skb, &p, e, now, is_reply, 1);
	} else {
		ipc = ipcache_lookup(p.tuple.saddr);
		if (ipc)
			src_id = ipc->identity;
	}
	ipc = ipcache_lookup(p.tuple.daddr);
	if (ipc) {
		dst_id = ipc->identity;
		dst_epid = ipc->endpoint_id;
		dst_flags = ipc->flags;
	}
	/* neither end is a local endpoint (uplink traffic to the host itself): not ours */
	if (!src_epid && !dst_epid)
		return TC_ACT_OK;

	if (!src_ep) {
		e = ct_lookup(&p, now, &is_reply);
		if (e)
			return ct_pass(skb, &p, e, now, is_reply, 1);
	}

	/* a new flow: the source's egress, then the destination's ingress */
	__u8 verdict = L7P_VERDICT_ALLOW, v;
	__u16 audited = 0;

	if (src_epid) {
		v = policy_lookup(src_epid, L7P_DIR_EGRESS, dst_id, p.tuple.proto, p.dport_host);
		if (v == L7P_VERDICT_NONE || v == L7P_VERDICT_DENY) {
			if (refuse(skb, &p, src_id, dst_id, src_epid, v, src_flags, L7P_DIR_EGRESS))
				return TC_ACT_SHOT;
			audited = L7P_CT_AUDIT;
			v = L7P_VERDICT_ALLOW;
		}
		verdict = v;
	}
	if (dst_epid) {
		v = policy_lookup(dst_epid, L7P_DIR_INGRESS, src_id, p.tuple.proto, p.dport_host);
		if (v == L7P_VERDICT_NONE || v == L7P_VERDICT_DENY) {
			if (refuse(skb, &p, src_id, dst_id, dst_epid, v, dst_flags, L7P_DIR_INGRESS))
				return TC_ACT_SHOT;
			audited = L7P_CT_AUDIT;
			v = L7P_VERDICT_ALLOW;
		}
		/* the egress redirect, if any, takes the flow; else the ingress one */
		if (verdict == L7P_VERDICT_ALLOW)
			verdict = v;
	}

	__u16 epid = src_epid ? src_epid : dst_epid;
	__u8 dir = src_epid ? L7P_DIR_EGRESS : L7P_DIR_INGRESS;

	__u16 local = (src_epid ? L7P_CT_SRC_LOCAL : 0) | (dst_epid ? L7P_CT_DST_LOCAL : 0) | audited;

	if (verdict == L7P_VERDICT_ALLOW) {
		ct_create(&p, now, src_id, dst_id, epid, local);
		/* an audited flow was reported as such already */
		if (!audited)
			emit(skb, &p, src_id, dst_id, epid, L7P_VERDICT_ALLOW, L7P_R_NEW_ALLOWED, dir);
		mark_passed(skb);
		return dst_epid ? pass_local(skb, &p, now) : TC_ACT_OK;
	}

	if (p.tuple.proto != IPPROTO_TCP && p.tuple.proto != IPPROTO_UDP)
		return drop(skb, &p, src_id, dst_id, epid, L7P_R_DROP_UNSUPPORTED_L4, dir);
	if (assign_to_proxy(skb, &p, proxy_port_for(verdict), 0) != 0)
		return drop(skb, &p, src_id, dst_id, epid, L7P_R_DROP_NO_SOCKET, dir);

	__u16 flags = L7P_CT_REDIRECT | local;
	__u8 reason = L7P_R_NEW_REDIRECT_HTTP;

	if (verdict == L7P_VERDICT_REDIRECT_DNS) {
		flags |= L7P_CT_REDIRECT_DNS;
		reason = L7P_R_NEW_REDIRECT_DNS;
	}
	ct_create(&p, now, src_id, dst_id, epid, flags);
	emit(skb, &p, src_id, dst_id, epid, verdict, reason, dir);
	return TC_ACT_OK;
}

/*
 * A packet a proxy socket sent (to_workload on an endpoint's veth or an uplink). Segments that
 * neither open nor close pass at once: the flow was tracked when it opened. A packet of a
 * tracked flow refreshes it (the proxy's answers to its client, its upstream's closing). A new
 * one is an upstream flow of the proxy, allowed: the client's request was judged in the proxy,
 * its connection in from_workload. It is recorded as L7P_CT_PROXY_UPSTREAM whatever its source
 * address (the client's, kept by the proxy, or the node's), so that its replies go to the
 * proxy's socket (assign_to_upstream) and not to the workload that has the client's address.
 */
static __always_inline int from_proxy(struct __sk_buff *skb, struct pkt *p, __u64 now)
{
	struct l7p_ipcache_value *ipc;
	struct l7p_ct_entry *e;
	__u32 src_id = L7P_WORLD_ID, dst_id = L7P_WORLD_ID;
	__u16 epid = 0;
	int is_reply = 0;

	if (p->tuple.proto == IPPROTO_TCP && !(p->tcp_flags & (TCPF_SYN | TCPF_FIN | TCPF_RST)))
		return TC_ACT_OK;
	e = ct_lookup(p, now, &is_reply);
	if (e)
		return ct_pass(skb, p, e, now, is_reply, 0);
	/* a closing segment of a flow no longer tracked records nothing */
	if (p->tuple.proto == IPPROTO_TCP && !p->is_new_syn)
		return TC_ACT_OK;
	ipc = ipcache_lookup(p->tuple.saddr);
	if (ipc)
		src_id = ipc->identity;
	ipc = ipcache_lookup(p->tuple.daddr);
	if (ipc) {
		dst_id = ipc->identity;
		epid = ipc->endpoint_id;
	}
	ct_create(p, now, src_id, dst_id, epid, L7P_CT_PROXY_UPSTREAM | L7P_CT_FROM_HOST);
	emit(skb, p, src_id, dst_id, epid, L7P_VERDICT_ALLOW, L7P_R_NEW_FROM_HOST, L7P_DIR_INGRESS);
	return TC_ACT_OK;
}

SEC("tc")
int to_workload(struct __sk_buff *skb)
{
	/* from_workload let it through already (L7P_MARK_PASSED): nothing left to check */
	if ((skb->mark & L7P_MARK_MASK) == L7P_MARK_PASSED)
		return TC_ACT_OK;

	struct pkt p;
	int r = parse(skb, &p);

	if (r == 1)
		return TC_ACT_OK;
	if (r < 0) {
		__builtin_memset(&p, 0, sizeof(p));
		return drop(skb, &p, 0, 0, 0, -r, 0xff);
	}

	__u64 now = ct_now();

	/* a proxy's own connection, locally sent: see L7P_MARK_PROXY */
	if ((skb->mark & L7P_MARK_MASK) == L7P_MARK_PROXY && skb->ingress_ifindex == 0)
		return from_proxy(skb, &p, now);

	__u32 ifindex = skb->ifindex;
	struct l7p_endpoint *dst_ep = bpf_map_lookup_elem(&l7p_endpoints, &ifindex);

	if (!dst_ep)
		return TC_ACT_OK; /* attached, but not (or no longer) an endpoint */

	__u32 dst_id = dst_ep->identity;
	__u16 dst_epid = dst_ep->endpoint_id;
	int is_reply = 0;
	struct l7p_ct_entry *e = ct_lookup(&p, now, &is_reply);

	if (e)
		return ct_pass(skb, &p, e, now, is_reply, 0);

	/*
	 * Not tracked. Locally generated packets (skb_iif 0: the proxies' upstream
	 * connections, host processes) are from the host, which may reach local endpoints
	 * (Cilium's default). Anything forwarded here from an interface without
	 * from_workload is checked against the endpoint's ingress policy.
	 */
	if (skb->ingress_ifindex == 0) {
		ct_create(&p, now, L7P_HOST_ID, dst_id, dst_epid, L7P_CT_FROM_HOST);
		emit(skb, &p, L7P_HOST_ID, dst_id, dst_epid, L7P_VERDICT_ALLOW, L7P_R_NEW_FROM_HOST, L7P_DIR_INGRESS);
		return TC_ACT_OK;
	}

	__u32 src_id = L7P_WORLD_ID;
	struct l7p_ipcache_value *ipc = ipcache_lookup(p.tuple.saddr);

	if (ipc)
		src_id = ipc->identity;
	__u8 v = policy_lookup(dst_epid, L7P_DIR_INGRESS, src_id, p.tuple.proto, p.dport_host);

	if (v == L7P_VERDICT_NONE || v == L7P_VERDICT_DENY) {
		if (refuse(skb, &p, src_id, dst_id, dst_epid, v, dst_ep->flags, L7P_DIR_INGRESS))
			return TC_ACT_SHOT;
		ct_create(&p, now, src_id, dst_id, dst_epid, L7P_CT_AUDIT);
		return TC_ACT_OK;
	}
	if (v != L7P_VERDICT_ALLOW)
		return drop(skb, &p, src_id, dst_id, dst_epid, L7P_R_DROP_REDIRECT_EGRESS, L7P_DIR_INGRESS);
	ct_create(&p, now, src_id, dst_id, dst_epid, 0);
	emit(skb, &p, src_id, dst_id, dst_epid, L7P_VERDICT_ALLOW, L7P_R_NEW_ALLOWED, L7P_DIR_INGRESS);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
