package upstream

import (
	"encoding/binary"
	"net/netip"
)

// IPv6 ranges whose addresses carry an IPv4 address and reach it: a host, a NAT64 gateway
// or a 6to4/Teredo relay turns them into IPv4 traffic to that address, so
// [64:ff9b::a9fe:a9fe] is 169.254.169.254 as much as ::ffff:169.254.169.254 is.
var (
	v4Compatible = netip.MustParsePrefix("::/96")           // RFC 4291, deprecated but still routed by some stacks
	v4Translated = netip.MustParsePrefix("::ffff:0:0:0/96") // SIIT, RFC 2765
	nat64        = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052 well-known prefix
	nat64Local   = netip.MustParsePrefix("64:ff9b:1::/48")  // RFC 8215 local-use prefix
	sixToFour    = netip.MustParsePrefix("2002::/16")       // RFC 3056
	teredo       = netip.MustParsePrefix("2001::/32")       // RFC 4380
)

// reachedAddr is the address a connection to ip ends up at: the IPv4 address an
// IPv4-mapped, IPv4-compatible, SIIT, NAT64, 6to4 or Teredo address carries, else ip
// itself (zone dropped). local reports the RFC 8215 local-use NAT64 range, whose IPv4
// address sits where the operator's prefix length puts it; the /96 layout is read, and the
// range counts as the operator's own network whatever it carries (netClassOf).
func reachedAddr(ip netip.Addr) (_ netip.Addr, local bool) {
	ip = ip.Unmap().WithZone("")
	if !ip.Is6() {
		return ip, false
	}
	b := ip.As16()
	last := netip.AddrFrom4([4]byte(b[12:16]))
	switch {
	case ip == netip.IPv6Unspecified() || ip == netip.IPv6Loopback():
		return ip, false // ::/96 holds these two as themselves
	case v4Compatible.Contains(ip), v4Translated.Contains(ip), nat64.Contains(ip):
		return last, false
	case nat64Local.Contains(ip):
		return last, true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), false
	case teredo.Contains(ip):
		// The client's address is stored inverted.
		var v [4]byte
		binary.BigEndian.PutUint32(v[:], ^binary.BigEndian.Uint32(b[12:16]))
		return netip.AddrFrom4(v), false
	}
	return ip, false
}
