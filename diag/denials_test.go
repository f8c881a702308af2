package diag

import (
	"strings"
	"testing"
	"time"
)

func TestDenialsTable(t *testing.T) {
	d := NewDenials(3)
	at := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	for i, target := range []string{"a:443", "b:443", "c:443", "a:443", "d:443"} {
		d.Record(target, "not on the allowlist", "add "+target, target, "10.0.0."+string(rune('1'+i)), false, at.Add(time.Duration(i)*time.Second))
	}
	got := d.Recent(0)
	var targets []string
	for _, x := range got {
		targets = append(targets, x.Target)
	}
	if strings.Join(targets, " ") != "d:443 a:443 c:443" {
		t.Errorf("targets = %v; want [d a c]: newest first, b dropped as least recent", targets)
	}
	if a := got[1]; a.Count != 2 || !a.FirstSeen.Equal(at) || !a.LastSeen.Equal(at.Add(3*time.Second)) || a.LastClient != "10.0.0.4" {
		t.Errorf("a = %+v", a)
	}
	if n := len(d.Recent(2)); n != 2 {
		t.Errorf("Recent(2) returned %d", n)
	}
}
