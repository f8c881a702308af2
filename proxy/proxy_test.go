package proxy

import (
	"net/http"
	"net/textproto"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricNamesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Options{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{
		"Connection":          {"X-A, close", "X-B"},
		"X-A":                 {"1"},
		"X-B":                 {"2"},
		"Keep-Alive":          {"timeout=5"},
		"Proxy-Connection":    {"keep-alive"},
		"Proxy-Authorization": {"Basic x"},
		"Te":                  {"trailers"},
		"Trailer":             {"X-T"},
		"Upgrade":             {"h2c"},
		"X-End-To-End":        {"kept"},
	}
	for _, name := range hopByHop {
		if c := textproto.CanonicalMIMEHeaderKey(name); c != name {
			t.Errorf("hopByHop has %q: header maps have it as %q", name, c)
		}
	}
	removeHopByHop(h)
	if len(h) != 1 || h.Get("X-End-To-End") != "kept" {
		t.Errorf("after removeHopByHop: %v; want only X-End-To-End", h)
	}
	ws := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Keep-Alive": {"1"}}
	removeHopByHop(ws)
	if ws.Get("Upgrade") != "websocket" || ws.Get("Connection") != "Upgrade" || ws.Get("Keep-Alive") != "" {
		t.Errorf("websocket upgrade headers after removeHopByHop: %v", ws)
	}
}
