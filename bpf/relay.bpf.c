// SPDX-License-Identifier: GPL-2.0
// The kernel half of callrec's media relay (cargo feature `kernel-relay`).
//
// Attached at tc ingress of the media interfaces. A plain-RTP IPv4 packet
// whose (source, destination) matches a flow the relay installed once that
// party's source was fixed is rewritten to leave from the relay's other port
// towards the other party, and is delivered (a local destination) or sent
// out of the interface the relay chose (the kernel resolving the next hop),
// without ever reaching the relay's socket. A copy goes to the recorder
// through a ring buffer. Everything the program is not sure of (no flow,
// RTCP, not RTP version 2, IP options, fragments, a full ring) is left
// untouched and reaches the socket, where the userspace relay handles,
// counts and records it as before: this program may only take work away,
// never decide differently. GPL because the ring buffer and redirect
// helpers are GPL-only.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Largest RTP packet the kernel path copies for the recorder; larger ones
// (video, jumbo Opus) go the userspace way.
#define MAX_RECORDED 1472

// Byte offsets in an Ethernet + IPv4 (no options) + UDP frame.
#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)
#define UDP_OFF (IP_OFF + 20)
#define UDP_SPORT_OFF (UDP_OFF + 0)
#define UDP_DPORT_OFF (UDP_OFF + 2)
#define UDP_CSUM_OFF (UDP_OFF + 6)
#define RTP_OFF (UDP_OFF + 8)

// All addresses and ports in network byte order, as on the wire.
struct flow_key {
	__u32 src_ip;
	__u32 dst_ip;
	__u16 src_port;
	__u16 dst_port;
};

struct flow {
	__u32 new_src_ip;
	__u32 new_dst_ip;
	__u16 new_src_port;
	__u16 new_dst_port;
	__u8 record;
	__u8 side;
	__u8 pad[2];
	// 0: the new destination is this host's own (delivered, only when the
	// packet came in on lo: anywhere else our own source address would be
	// a martian); else the interface to send it out of, to a neighbour on
	// that link (the kernel resolves its address).
	__u32 out_ifindex;
	__u32 pad2;
	__u64 stream;
	__u64 packets;
	__u64 bytes;
	__u64 last_ns;
};

struct recorded {
	__u64 stream;
	__u64 arrival_ns;
	__u32 len;
	__u8 side;
	__u8 pad[3];
	__u8 data[MAX_RECORDED];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} recorder SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct recorded);
} scratch SEC(".maps");

// Index 0: packets relayed here; 1: packets left to userspace because the
// ring was full (recorded there instead).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// A packet this program leaves alone goes on to the next program on the
// interface (another callrec, a firewall), then up the stack as usual.
#define NOT_OURS TC_ACT_UNSPEC

_Static_assert(sizeof(struct flow_key) == 12, "the relay's FlowKey");
_Static_assert(sizeof(struct flow) == 56, "the relay's FlowValue");

#define LOOPBACK_IFINDEX 1

// Whether an IPv4 header (20 bytes, no options) carries a correct checksum:
// the userspace path never sees a packet the IP layer would drop.
static __always_inline int ip_checksum_ok(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

static __always_inline void count(__u32 i)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &i);
	if (c)
		*c += 1;
}

SEC("classifier")
int relay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NOT_OURS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return NOT_OURS;
	// Addressed to this host, lengths that agree with the frame (no
	// trailing bytes, nothing merged), a valid IP checksum.
	if (skb->pkt_type != PACKET_HOST || bpf_ntohs(ip->tot_len) != skb->len - ETH_HLEN ||
	    !ip_checksum_ok(ip))
		return NOT_OURS;
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *rtp = (void *)(udp + 1);
	if ((void *)(rtp + 2) > end)
		return NOT_OURS;
	struct flow_key key = {
		.src_ip = ip->saddr,
		.dst_ip = ip->daddr,
		.src_port = udp->source,
		.dst_port = udp->dest,
	};
	struct flow *f = bpf_map_lookup_elem(&flows, &key);
	if (!f)
		return NOT_OURS;
	// RTP version 2 only; RTCP multiplexed on the RTP port goes up.
	if ((rtp[0] & 0xc0) != 0x80 || (rtp[1] >= 192 && rtp[1] <= 223))
		return NOT_OURS;
	__u32 len = bpf_ntohs(udp->len);
	if (len != bpf_ntohs(ip->tot_len) - 20 || len < 8 + 12 || len - 8 > MAX_RECORDED)
		return NOT_OURS;
	len -= 8;
	if (!f->out_ifindex && skb->ingress_ifindex != LOOPBACK_IFINDEX)
		return NOT_OURS;

	__u64 now = bpf_ktime_get_ns();
	if (f->record) {
		__u32 zero = 0;
		struct recorded *r = bpf_map_lookup_elem(&scratch, &zero);
		if (!r)
			return NOT_OURS;
		__u32 n = len;
		if (n < 12 || n > MAX_RECORDED)
			return NOT_OURS;
		if (bpf_skb_load_bytes(skb, RTP_OFF, r->data, n))
			return NOT_OURS;
		r->stream = f->stream;
		r->arrival_ns = now;
		r->len = n;
		r->side = f->side;
		__u64 size = n + __builtin_offsetof(struct recorded, data);
		if (size > sizeof(*r))
			return NOT_OURS;
		if (bpf_ringbuf_output(&recorder, r, size, 0)) {
			count(1);
			return NOT_OURS;
		}
	}
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, len);
	f->last_ns = now;

	__u32 old_src = key.src_ip, old_dst = key.dst_ip;
	__u32 new_src = f->new_src_ip, new_dst = f->new_dst_ip;
	__u16 old_sport = key.src_port, old_dport = key.dst_port;
	__u16 new_sport = f->new_src_port, new_dport = f->new_dst_port;
	// UDP checksum first (its pseudo header covers the addresses); a zero
	// checksum (none, allowed over IPv4) stays zero.
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_src, new_src,
			    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_dst, new_dst,
			    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4);
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_sport, new_sport, BPF_F_MARK_MANGLED_0 | 2);
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_dport, new_dport, BPF_F_MARK_MANGLED_0 | 2);
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_src, new_src, 4);
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_dst, new_dst, 4);
	bpf_skb_store_bytes(skb, IP_SRC_OFF, &new_src, 4, 0);
	bpf_skb_store_bytes(skb, IP_DST_OFF, &new_dst, 4, 0);
	bpf_skb_store_bytes(skb, UDP_SPORT_OFF, &new_sport, 2, 0);
	bpf_skb_store_bytes(skb, UDP_DPORT_OFF, &new_dport, 2, 0);
	count(0);
	if (!f->out_ifindex)
		return TC_ACT_OK;
	return bpf_redirect_neigh(f->out_ifindex, 0, 0, 0);
}

char LICENSE[] SEC("license") = "GPL";
