package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/egressd/egressd/internal/residency"
)

// burstTunnels and burstSettle are the burst memory figure's shape: how many
// tunnels are open at once, and how long after they have all closed the proxy's
// memory is read again.
const (
	burstTunnels = 5000
	burstSettle  = time.Minute
)

// benchMemory measures each forward proxy's memory: its resident set when fresh,
// its growth per idle tunnel, and, on a second fresh process, its resident set
// before a burst of tunnels, with them all open, and a while after they closed.
func benchMemory(s settings, dir string, targets []string, echo string, peers []*peer, res results) error {
	fresh := row{name: "RSS fresh (MiB)"}
	idle := row{name: fmt.Sprintf("RSS per idle tunnel, KiB (%d open)", s.idle)}
	for _, p := range peers {
		fresh.columns = append(fresh.columns, p.name)
		idle.columns = append(idle.columns, p.name)
		if p.relay != nil {
			fresh.values = append(fresh.values, nanValue)
			idle.values = append(idle.values, nanValue)
			continue
		}
		r, err := residency.Resident(p.cmd.Process.Pid)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		fresh.values = append(fresh.values, float64(r)/(1<<20))
		perTunnel, err := idleMemory(p, echo, s.idle)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		idle.values = append(idle.values, perTunnel/1024)
	}
	res.add(rowRSSFresh, fresh.printPlain(1))
	res.add(rowRSSIdle, idle.printPlain(1))

	n, settle := burstTunnels, burstSettle
	if s.idle < 1000 { // -quick
		n, settle = s.idle, 5*time.Second
	}
	before := row{name: fmt.Sprintf("RSS before a burst of %d tunnels (MiB)", n)}
	peak := row{name: "  RSS with them all open (MiB)"}
	after := row{name: fmt.Sprintf("  RSS %s after they closed (MiB)", settle)}
	ratio := row{name: "  after / before"}
	type burst struct {
		p      *peer
		closed time.Time
		before int64
	}
	var bursts []burst
	defer func() {
		for _, b := range bursts {
			b.p.stop()
		}
	}()
	for _, p := range peers {
		for _, r := range []*row{&before, &peak, &after, &ratio} {
			r.columns = append(r.columns, p.name)
			r.values = append(r.values, nanValue)
		}
		if p.restart == nil {
			continue
		}
		q, err := p.restart(filepath.Join(dir, "burst-"+sanitize(p.name)), targets)
		if err != nil {
			return fmt.Errorf("%s, started again for the burst: %w", p.name, err)
		}
		q.name = p.name
		bursts = append(bursts, burst{p: q})
		b := &bursts[len(bursts)-1]
		time.Sleep(time.Second) // as fresh as the first figure: started and settled
		if b.before, err = residency.Resident(q.cmd.Process.Pid); err != nil {
			return err
		}
		i := len(before.values) - 1
		before.values[i] = float64(b.before) / (1 << 20)
		high, err := openBurst(q, echo, n)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		peak.values[i] = float64(high) / (1 << 20)
		b.closed = time.Now()
	}
	for _, b := range bursts {
		time.Sleep(time.Until(b.closed.Add(settle)))
		r, err := residency.Resident(b.p.cmd.Process.Pid)
		if err != nil {
			return err
		}
		for i, name := range after.columns {
			if name == b.p.name {
				after.values[i] = float64(r) / (1 << 20)
				ratio.values[i] = float64(r) / float64(b.before)
			}
		}
	}
	res.add(rowRSSBefore, before.printPlain(1))
	peak.printPlain(1)
	after.printPlain(1)
	res.add(rowBurstRatio, ratio.printPlain(2))
	return nil
}

var nanValue = median(nil)

func sanitize(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// openBurst opens n tunnels through p, 64 at a time, each used once; with all of
// them open it reads p's resident set, then closes them all.
func openBurst(p *peer, echo string, n int) (int64, error) {
	closeAll, err := openTunnels(p, echo, n, 64)
	defer closeAll()
	if err != nil {
		return 0, fmt.Errorf("the burst: %w", err)
	}
	return residency.Resident(p.cmd.Process.Pid)
}
