//go:build linux

package residency

import (
	"os"
	"runtime"
	"testing"
)

func TestReadOnlyMappings(t *testing.T) {
	maps := []byte(`00400000-00c60000 r-xp 00000000 fe:00 9978403                            /usr/bin/egressd
00c60000-01654000 r--p 00860000 fe:00 9978403                            /usr/bin/egressd
01654000-016ea000 rw-p 01254000 fe:00 9978403                            /usr/bin/egressd
016ea000-03731000 rw-p 00000000 00:00 0
7f92b32a2000-7f92b33f8000 r-xp 00026000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f92b3400000-7f92b3401000 r--s 00000000 fe:00 9978403                    /usr/bin/egressd
`)
	got, err := readOnlyMappings(maps, "/usr/bin/egressd")
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{{0x400000, 0xc60000}, {0xc60000, 0x1654000}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("readOnlyMappings = %x; want the code and constants only, %x", got, want)
	}
	if _, err := readOnlyMappings(maps, "/usr/bin/other"); err == nil {
		t.Error("no mapping of the path: no error")
	}
	if _, err := readOnlyMappings([]byte("zz-00 r-xp 0 0 0 /x\n"), "/x"); err == nil {
		t.Error("a bad address range: no error")
	}
}

// TestTrimExecutable: the test binary's own read-only pages leave its resident
// set, and the code still runs afterwards (the pages come back as it is used).
func TestTrimExecutable(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	dropped, err := TrimExecutable()
	if err != nil {
		t.Fatal(err)
	}
	if dropped < 256<<10 {
		t.Errorf("resident set shrank by %d bytes; want the test binary's pages, more than 256 KiB", dropped)
	}
}

// TestResident: this process's resident set, by pid and as self, is the same order
// of size; a process that does not exist is an error.
func TestResident(t *testing.T) {
	self, err := Resident(0)
	if err != nil || self <= 0 {
		t.Fatalf("Resident(0) = %d, %v", self, err)
	}
	byPid, err := Resident(os.Getpid())
	if err != nil || byPid < self/2 || byPid > 2*self {
		t.Errorf("Resident(own pid) = %d, %v; Resident(0) = %d", byPid, err, self)
	}
	if _, err := Resident(1 << 30); err == nil {
		t.Error("a pid that does not exist: no error")
	}
}
