package proxy

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// quietFor returns how long ago c last sent or received data, from the kernel's
// TCP_INFO; ok is false where that cannot be read.
func quietFor(c net.Conn) (quiet time.Duration, ok bool) {
	sc, isSys := c.(syscall.Conn)
	if !isSys {
		return 0, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	cerr := raw.Control(func(fd uintptr) {
		quiet, ok = quietFd(int(fd))
	})
	return quiet, ok && cerr == nil
}

// quietFd is quietFor of a socket descriptor.
func quietFd(fd int) (time.Duration, bool) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, false
	}
	ms := min(info.Last_data_recv, info.Last_data_sent)
	return time.Duration(ms) * time.Millisecond, true
}

// idleOpen reports whether an idle connection is still open with nothing to read,
// without waiting: a peek that would block. A closed one reads EOF; one with bytes
// the origin sent unasked is no clean connection either.
func idleOpen(c *net.TCPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		open = rerr == unix.EAGAIN
		return true // never wait for readiness
	})
	return err == nil && open
}

// originalDst is where a connection redirected by nftables was going
// (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for IPv6).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	v6 := false
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.IP.To4() == nil {
		v6 = true
	}
	const soOriginalDst = 80 // SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST
	var ap netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			info, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst)
			if err != nil {
				serr = err
				return
			}
			// The struct holds the port in network order: read its bytes as they lie.
			port := binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, info.Addr.Port))
			ap = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr).Unmap(), port)
			return
		}
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
		if err != nil {
			serr = err
			return
		}
		sa := mreq.Multiaddr // struct sockaddr_in: family, port (network order), address
		port := uint16(sa[2])<<8 | uint16(sa[3])
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{sa[4], sa[5], sa[6], sa[7]}), port)
	})
	if err == nil {
		err = serr
	}
	return ap, err
}
