// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * weft's tc fast path for established flows.
 *
 * Attached at tc ingress of every pod's host-side veth (weft_from_pod) and
 * of the node's uplink (weft_from_uplink). A packet goes straight to its
 * next device, skipping the host's routing and netfilter, only when all of
 * this holds:
 *   - IPv4 without options or fragments, or IPv6 with TCP/UDP right after
 *     the fixed header;
 *   - TCP without SYN, FIN or RST (so conntrack sees every state change),
 *     or UDP;
 *   - from a pod: its source address belongs to that veth (weft_pods,
 *     filled by the agent), so anti-spoofing holds here too;
 *   - conntrack (bpf_skb_ct_lookup) holds the flow, has seen its reply and
 *     is assured, and has no NAT (Services, masquerade keep their path);
 *   - the FIB routes it to another device without fragmenting: into a
 *     local pod (its veth and address in weft_pods) with bpf_redirect_peer,
 *     or from a pod toward anything else with bpf_redirect_neigh. From the
 *     uplink only traffic to local pods is taken.
 * Everything else returns TC_ACT_OK: today's path (netfilter: policy,
 * anti-spoofing, kube-proxy, masquerade) decides, as without this program.
 * The program never drops.
 *
 * The licence string must be GPL-compatible: the kernel offers
 * bpf_fib_lookup and kfuncs only to such programs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* conntrack status bits (include/uapi/linux/netfilter/nf_conntrack_common.h). */
#define IPS_SEEN_REPLY (1UL << 1)
#define IPS_ASSURED (1UL << 2)
#define IPS_SRC_NAT (1UL << 4)
#define IPS_DST_NAT (1UL << 5)

/* A UDP flow's conntrack entry is refreshed on the fast path, since
 * netfilter no longer sees its packets: the kernel's UDP stream timeout. */
#define UDP_STREAM_TIMEOUT_MS 120000

/* The kfuncs' types, as much as this program uses. CO-RE relocates
 * nf_conn.status to its offset in the running kernel; bpf_ct_opts is the
 * 12-byte layout every kernel since 6.0 accepts. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

#define BPF_F_CURRENT_NETNS (-1)

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_len,
					 struct bpf_ct_opts *opts, __u32 opts_len) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;
extern int bpf_ct_change_timeout(struct nf_conn *ct, __u32 timeout) __ksym;

/* A pod's address behind a host-side veth. Written by the agent; the
 * layout is weft_fastpath::PodKey. */
struct pod_key {
	__u32 ifindex;
	__u32 family; /* 4 or 6 */
	__u8 addr[16]; /* IPv4 in the first 4 bytes, the rest zero */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct pod_key);
	__type(value, __u8);
} weft_pods SEC(".maps");

/* Per-CPU packet counters, indexed by enum stat (weft_fastpath::Stats). */
enum stat { STAT_TO_POD, STAT_TO_NODE, STAT_SLOW, STAT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} weft_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&weft_stats, &which);
	if (n)
		*n += 1;
}

static __always_inline int slow(void)
{
	count(STAT_SLOW);
	return TC_ACT_OK;
}

static __always_inline int is_pod(__u32 ifindex, __u32 family, const void *addr)
{
	struct pod_key key = { .ifindex = ifindex, .family = family };
	__builtin_memcpy(key.addr, addr, family == 4 ? 4 : 16);
	return bpf_map_lookup_elem(&weft_pods, &key) != 0;
}

/* The flow is established, un-NATed and known to conntrack. */
static __always_inline int established(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_len,
				       __u8 l4proto)
{
	struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = l4proto };
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, tuple, tuple_len, &opts, sizeof(opts));
	if (!ct)
		return 0;
	unsigned long status = ct->status;
	int ok = (status & (IPS_SEEN_REPLY | IPS_ASSURED)) == (IPS_SEEN_REPLY | IPS_ASSURED) &&
		 !(status & (IPS_SRC_NAT | IPS_DST_NAT));
	if (ok && l4proto == IPPROTO_UDP)
		bpf_ct_change_timeout(ct, UDP_STREAM_TIMEOUT_MS);
	bpf_ct_release(ct);
	return ok;
}

/* Forwards a packet the FIB routed (fib->ifindex, nexthop in fib's
 * destination): into a local pod's netns, or toward the next hop. */
static __always_inline int forward(struct __sk_buff *skb, struct bpf_fib_lookup *fib, int rc, __u32 family,
				   const void *daddr, int from_pod)
{
	if (fib->ifindex == skb->ingress_ifindex)
		return slow();
	if (is_pod(fib->ifindex, family, daddr)) {
		/* A local pod: its MAC must be known, the peer sees the frame as is. */
		if (rc != BPF_FIB_LKUP_RET_SUCCESS)
			return slow();
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > data_end)
			return slow();
		__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
		count(STAT_TO_POD);
		return bpf_redirect_peer(fib->ifindex, 0);
	}
	if (!from_pod)
		return slow();
	struct bpf_redir_neigh nh = {};
	if (family == 4) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib->ipv4_dst;
	} else {
		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16);
	}
	count(STAT_TO_NODE);
	return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
}

/* The ports of a TCP segment without SYN, FIN or RST, or of a UDP
 * datagram; 0 for anything else. */
static __always_inline int l4_ports(void *l4, void *data_end, __u8 proto, __be16 *sport, __be16 *dport)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end || tcp->syn || tcp->fin || tcp->rst)
			return 0;
		*sport = tcp->source;
		*dport = tcp->dest;
		return 1;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return 0;
		*sport = udp->source;
		*dport = udp->dest;
		return 1;
	}
	return 0;
}

/* The FIB's answer for an established flow (BPF_FIB_LKUP_RET_SUCCESS, or
 * NO_NEIGH for bpf_redirect_neigh to resolve); -1 when the packet must
 * take the slow path. */
static __always_inline int route(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_len, __u8 proto,
				 struct bpf_fib_lookup *fib)
{
	if (!established(skb, tuple, tuple_len, proto))
		return -1;
	int rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	return rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH ? rc : -1;
}

static __always_inline int handle_ipv4(struct __sk_buff *skb, int from_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return slow();
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) || ip->ttl <= 1)
		return slow();
	if (from_pod && !is_pod(skb->ingress_ifindex, 4, &ip->saddr))
		return slow();

	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	__u8 proto = ip->protocol;
	if (!l4_ports(ip + 1, data_end, proto, &tuple.ipv4.sport, &tuple.ipv4.dport))
		return slow();

	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = proto,
		.tos = ip->tos,
		.ipv4_src = ip->saddr,
		.ipv4_dst = ip->daddr,
		.ifindex = skb->ingress_ifindex,
	};
	__be32 daddr = ip->daddr;
	int rc = route(skb, &tuple, sizeof(tuple.ipv4), proto, &fib);
	if (rc < 0)
		return slow();

	/* The kfunc and helper calls invalidated packet pointers: reload. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return slow();
	/* Forwarding decrements the TTL (ip_decrease_ttl). */
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return forward(skb, &fib, rc, 4, &daddr, from_pod);
}

static __always_inline int handle_ipv6(struct __sk_buff *skb, int from_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end)
		return slow();
	if (ip6->hop_limit <= 1)
		return slow();
	if (from_pod && !is_pod(skb->ingress_ifindex, 6, &ip6->saddr))
		return slow();

	struct bpf_sock_tuple tuple = {};
	__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
	__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
	__u8 proto = ip6->nexthdr;
	if (!l4_ports(ip6 + 1, data_end, proto, &tuple.ipv6.sport, &tuple.ipv6.dport))
		return slow();

	struct bpf_fib_lookup fib = {
		.family = AF_INET6,
		.l4_protocol = proto,
		.ifindex = skb->ingress_ifindex,
	};
	__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
	__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	__u8 daddr[16];
	__builtin_memcpy(daddr, &ip6->daddr, 16);
	int rc = route(skb, &tuple, sizeof(tuple.ipv6), proto, &fib);
	if (rc < 0)
		return slow();

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end)
		return slow();
	ip6->hop_limit--;
	return forward(skb, &fib, rc, 6, daddr, from_pod);
}

static __always_inline int fastpath(struct __sk_buff *skb, int from_pod)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return slow();
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(skb, from_pod);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(skb, from_pod);
	return slow();
}

SEC("tc")
int weft_from_pod(struct __sk_buff *skb)
{
	return fastpath(skb, 1);
}

SEC("tc")
int weft_from_uplink(struct __sk_buff *skb)
{
	return fastpath(skb, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
