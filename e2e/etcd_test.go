package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/egressd/egressd/internal/etcdtest"
)

// etcdMember is one member of an etcd cluster run as a process of its own: this
// test binary in its "etcd" helper mode, on the embed package, so that stopping a
// member is kill -9 of a process.
type etcdMember struct {
	t    *testing.T
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// etcdProcesses is a three-member etcd cluster, one process a member, on loopback.
type etcdProcesses struct {
	Members   []*etcdMember
	Endpoints []string
}

// startEtcdProcesses starts an n-member cluster and waits until every member is
// ready (a quorum is up).
func startEtcdProcesses(t *testing.T, n int) *etcdProcesses {
	t.Helper()
	ports := etcdtest.FreePorts(t, 2*n)
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &etcdProcesses{}
	for i := range n {
		m := &etcdMember{t: t, args: []string{fmt.Sprintf("m%d", i), t.TempDir(), fmt.Sprint(ports[2*i]), fmt.Sprint(ports[2*i+1]), strings.Join(initial, ",")}}
		c.Members = append(c.Members, m)
		c.Endpoints = append(c.Endpoints, fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]))
	}
	ready := make(chan error, n)
	for _, m := range c.Members {
		go func() { ready <- m.start() }()
	}
	for range n {
		if err := <-ready; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Kill()
		}
	})
	return c
}

// start runs the member's process and waits (30 s at most) for it to be ready.
func (m *etcdMember) start() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	m.cmd = exec.Command(self, m.args...)
	m.cmd.Env = append(os.Environ(), "EGRESSD_E2E_HELPER=etcd")
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	m.cmd.Stderr = os.Stderr
	if err := m.cmd.Start(); err != nil {
		return err
	}
	m.done = make(chan struct{})
	go func() { m.cmd.Wait(); close(m.done) }()
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
		for s.Scan() {
		}
	}()
	select {
	case l := <-line:
		if l != "ready" {
			return fmt.Errorf("etcd member %s: %q", m.args[0], l)
		}
		return nil
	case <-time.After(30 * time.Second):
		m.Kill()
		return fmt.Errorf("etcd member %s not ready within 30s", m.args[0])
	}
}

// Kill is kill -9 of the member's process.
func (m *etcdMember) Kill() {
	if m.cmd != nil && m.cmd.Process != nil {
		m.cmd.Process.Signal(syscall.SIGKILL)
		<-m.done
	}
}

// Restart starts a killed member again on its data directory; it rejoins.
func (m *etcdMember) Restart() {
	m.t.Helper()
	if err := m.start(); err != nil {
		m.t.Fatal(err)
	}
}

// helperEtcd is the "etcd" helper mode: NAME DIR CLIENTPORT PEERPORT INITIALCLUSTER.
// It prints "ready" once the member serves, and runs until killed.
func helperEtcd(args []string) int {
	if len(args) != 5 {
		fmt.Fprintln(os.Stderr, "etcd helper: NAME DIR CLIENTPORT PEERPORT INITIALCLUSTER")
		return 2
	}
	cfg := etcdtest.MemberConfig(args[0], filepath.Join(args[1], "data"), "http://127.0.0.1:"+args[2], "http://127.0.0.1:"+args[3], args[4])
	e, err := etcdtest.Launch(cfg, 60*time.Second)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println("ready")
	err = <-e.Err()
	fmt.Fprintln(os.Stderr, "etcd helper:", err)
	return 1
}

// waitForLeader waits (15 s at most) until the members at endpoints agree on a
// leader among them: after a member is killed, etcd elects another before it
// takes writes again.
func waitForLeader(t *testing.T, endpoints []string) {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		var leader uint64
		ids := map[uint64]bool{}
		for _, ep := range endpoints {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := c.Status(ctx, ep)
			cancel()
			if err != nil || st.Leader == 0 || leader != 0 && st.Leader != leader {
				ok = false
				break
			}
			leader = st.Leader
			ids[st.Header.MemberId] = true
		}
		if ok && ids[leader] { // a killed leader is still named until the others elect
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the etcd members at %v agreed on no leader within 15s", endpoints)
}

// leader is the index of the member that leads now.
func (c *etcdProcesses) leader(t *testing.T) int {
	t.Helper()
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i, ep := range c.Endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cl.Status(ctx, ep)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return i
		}
	}
	t.Fatal("no etcd member leads")
	return -1
}
