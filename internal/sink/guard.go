package sink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ErrDenied is a receiver refused by the private-address guard (Options.DenyPrivate). Retrying
// cannot help, so the message is dead-lettered with the reason.
var ErrDenied = errors.New("receiver address refused")

// Denied reports whether the guard refuses ip: loopback, private (RFC 1918, fc00::/7), link-local,
// unspecified and multicast addresses, IPv4-mapped IPv6 forms included. These are where a
// forged endpoint would reach the deliverer's own network (SSRF).
func Denied(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || !ip.IsValid()
}

// guardedDial resolves addr's host itself, refuses it when any of its addresses is denied, and
// connects to the address it checked, so that a second lookup cannot answer differently (DNS
// rebinding).
func guardedDial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("%s has no address", host)
	}
	for _, ip := range ips {
		if Denied(ip) {
			return nil, fmt.Errorf("%w: %s resolves to %s, a loopback, private or link-local address (HERALD_DENY_PRIVATE)", ErrDenied, host, ip)
		}
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", net.JoinHostPort(ips[0].Unmap().String(), port))
}
