package intercept

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inNewNetns runs f on a thread moved into a new network namespace of its own, which
// is gone when f returns. It skips where namespaces cannot be made (not root).
func inNewNetns(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	var skip string
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread is not returned: it ends with the namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			skip = "cannot make a network namespace here (" + err.Error() + "): run the tests as root"
			return
		}
		f()
	}()
	<-done
	if skip != "" {
		t.Skip(skip)
	}
}

func TestApplyRemoveIdempotent(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("nft is not installed: the tests read the rules back with it (apt-get install nftables)")
	}
	inNewNetns(t, func() {
		o := Options{ProxyPort: 15001, DNSPort: 15053, ExcludeUID: 65532, DropOther: true}
		for range 2 {
			if err := Apply(o); err != nil {
				t.Errorf("Apply: %v", err)
				return
			}
		}
		// nft sees what netlink made, the way Text says it (run in this thread's namespace).
		cmd := exec.Command("nft", "list", "table", "inet", TableName)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("nft list: %v %s", err, out)
			return
		}
		got := string(out)
		for _, want := range []string{
			"meta skuid 65532 return", "ip daddr 127.0.0.0/8 return", "ip6 daddr ::1 return",
			"meta nfproto ipv4 udp dport 53 redirect to :15053", "meta nfproto ipv4 tcp dport 53 redirect to :15053", "meta l4proto tcp redirect to :15001",
			"meta skuid 65532 accept", "meta l4proto udp drop", "meta l4proto icmp drop", "meta l4proto ipv6-icmp drop",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("the table lacks %q:\n%s", want, got)
			}
		}
		if n := strings.Count(nftRuleset(), "table inet egressd"); n != 1 {
			t.Errorf("%d egressd tables after two Apply; want 1", n)
		}
		if err := Remove(); err != nil {
			t.Errorf("Remove: %v", err)
		}
		if ok, _ := Installed(); ok {
			t.Error("the table is still there after Remove")
		}
		if err := Remove(); err != nil {
			t.Errorf("Remove with no table: %v", err)
		}
	})
}

func nftRuleset() string {
	out, _ := exec.Command("nft", "list", "ruleset").CombinedOutput()
	return string(out)
}

func TestTextDropIPv6(t *testing.T) {
	txt := Text(Options{ProxyPort: 15001, ExcludeUID: 1000, DropIPv6: true})
	for _, want := range []string{"meta nfproto ipv4 meta l4proto tcp redirect to :15001", "meta nfproto ipv6 drop", "meta skuid 1000 return"} {
		if !strings.Contains(txt, want) {
			t.Errorf("Text lacks %q:\n%s", want, txt)
		}
	}
	if strings.Contains(txt, "dport 53") {
		t.Error("DNS redirected with no DNS port")
	}
}
