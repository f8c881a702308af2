//go:build linux

// Package residency keeps egressd's resident set to what serving uses.
//
// A Go binary's startup touches much of its own code and read-only data once:
// package initialisers (protobuf descriptors, gRPC and etcd registrations, the
// Prometheus collectors) and the runtime's own checks. Those pages stay resident,
// counted in the process's RSS, although serving never reads them again: in egressd
// about 16 MB of a fresh 19 MB. TrimExecutable tells the kernel, once startup is
// over, that the executable's read-only pages are not needed (MADV_DONTNEED); the
// ones serving uses come back at their first touch, as a minor fault from the page
// cache, which keeps them all the time. After a burst of connections, which touches
// code an idle proxy does not run, it does so again.
package residency

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// TrimExecutable drops the executable's read-only file pages (its code and
// constants; never a writable one) from the resident set, and returns how many
// bytes the resident set shrank by. The pages stay in the page cache.
func TrimExecutable() (int64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	ranges, err := readOnlyMappings(maps, exe)
	if err != nil {
		return 0, err
	}
	before, err := Resident(0)
	if err != nil {
		return 0, err
	}
	for _, r := range ranges {
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, r.start, r.end-r.start, syscall.MADV_DONTNEED); errno != 0 {
			return 0, fmt.Errorf("madvise %#x-%#x: %w", r.start, r.end, errno)
		}
	}
	after, err := Resident(0)
	if err != nil {
		return 0, err
	}
	return before - after, nil
}

type mapping struct{ start, end uintptr }

// readOnlyMappings returns the private, read-only mappings of path in a
// /proc/PID/maps listing.
func readOnlyMappings(maps []byte, path string) ([]mapping, error) {
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// address perms offset dev inode pathname
		f := strings.Fields(sc.Text())
		if len(f) < 6 || strings.Join(f[5:], " ") != path {
			continue
		}
		if perms := f[1]; len(perms) != 4 || perms[1] != '-' || perms[3] != 'p' {
			continue // writable or shared: not ours to drop
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			return nil, fmt.Errorf("maps line %q: no address range", sc.Text())
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err := errors.Join(err1, err2); err != nil || end <= start {
			return nil, fmt.Errorf("maps line %q: bad address range", sc.Text())
		}
		out = append(out, mapping{uintptr(start), uintptr(end)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no read-only mapping of %s in /proc/self/maps", path)
	}
	return out, sc.Err()
}

// Resident is the resident set size in bytes (VmRSS) of process pid, or with pid 0
// of this one.
func Resident(pid int) (int64, error) {
	proc := "self"
	if pid != 0 {
		proc = strconv.Itoa(pid)
	}
	status, err := os.ReadFile("/proc/" + proc + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%s/status", proc)
}
