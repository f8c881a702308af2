package main

import (
	"fmt"
	"math"
	"strings"
)

// The rows the goals are read from.
const (
	rowCPUPerGiB     = "cpu per GiB"
	rowHTTPRate      = "http rate"
	rowHTTPP99       = "http p99"
	rowHTTPP99Fixed  = "http p99 at a fixed rate"
	rowCPUPerRequest = "cpu per request"
	rowTunnelRate    = "tunnel rate"
	rowTunnelP99     = "tunnel p99"
	rowCPUPerTunnel  = "cpu per tunnel"
	rowRSSFresh      = "rss fresh"
	rowRSSIdle       = "rss per idle tunnel"
	rowRSSBefore     = "rss before burst"
	rowBurstRatio    = "burst ratio"
)

// results keeps the rows the goals are read from.
type results map[string]row

func (r results) add(key string, rw row) { r[key] = rw }

// value is the figure of the named column in the row, NaN if there is none.
func (r results) value(key, column string) float64 {
	rw, ok := r[key]
	if !ok || rw.err != nil {
		return math.NaN()
	}
	for i, c := range rw.columns {
		if c == column {
			return rw.values[i]
		}
	}
	return math.NaN()
}

// goals prints how egressd stands against the goals of its cost issue, from this
// run's figures: its peers are the forward proxies (Squid, tinyproxy, Smokescreen);
// go-bare* and the relays are ceilings, and egressd@REV is egressd itself.
func (r results) goals(peers []*peer) {
	var fwd, all []string
	for _, p := range peers {
		if p.name == "egressd" {
			continue
		}
		all = append(all, p.name)
		if p.relay == nil && !p.connectOnly && !strings.HasPrefix(p.name, "egressd") {
			fwd = append(fwd, p.name)
		}
	}
	fmt.Println()
	fmt.Println("goals, from this run (peers: " + strings.Join(fwd, ", ") + ")")
	best := func(key string, names []string, lower bool) (string, float64) {
		name, v := "", math.NaN()
		for _, n := range names {
			x := r.value(key, n)
			if math.IsNaN(x) {
				continue
			}
			if math.IsNaN(v) || lower && x < v || !lower && x > v {
				name, v = n, x
			}
		}
		return name, v
	}
	line := func(goal, key string, names []string, lower bool, factor float64, unit string) {
		e := r.value(key, "egressd")
		name, v := best(key, names, lower)
		if math.IsNaN(e) || math.IsNaN(v) {
			return
		}
		met := e <= v*factor
		if !lower {
			met = e >= v*factor
		}
		verdict := map[bool]string{true: "met", false: "NOT met"}[met]
		fmt.Printf("  %-58s egressd %8.2f %-4s %s %8.2f (%.2fx)  %s\n", goal, e, unit, name, v, e/v, verdict)
	}
	line("CPU per new tunnel <= 0.75x the cheapest peer's", rowCPUPerTunnel, fwd, true, 0.75, "us")
	line("CPU per new tunnel <= the bare Go relay's", rowCPUPerTunnel, []string{"go-bare*"}, true, 1, "us")
	line("new tunnels/s ahead of every peer", rowTunnelRate, fwd, false, 1, "/s")
	line("CPU per plain-HTTP request <= 0.5x Squid's", rowCPUPerRequest, []string{"squid"}, true, 0.5, "us")
	line("CPU per GiB tunnelled the lowest of all", rowCPUPerGiB, all, true, 1, "s")
	line("HTTP p99 <= every peer's", rowHTTPP99, fwd, true, 1, "ms")
	line("HTTP p99 at one offered rate <= every peer's", rowHTTPP99Fixed, fwd, true, 1, "ms")
	line("new-tunnel p99 <= every peer's", rowTunnelP99, fwd, true, 1, "ms")
	fixed := func(goal, key string, limit float64, unit string) {
		e := r.value(key, "egressd")
		if math.IsNaN(e) {
			return
		}
		fmt.Printf("  %-58s egressd %8.2f %-4s limit %8.2f          %s\n", goal, e, unit, limit,
			map[bool]string{true: "met", false: "NOT met"}[e <= limit])
	}
	fixed("fresh RSS <= 10 MiB", rowRSSFresh, 10, "MiB")
	fixed("RSS per idle tunnel < 10 KiB", rowRSSIdle, 10, "KiB")
	fixed("RSS a minute after a burst <= 1.5x before it", rowBurstRatio, 1.5, "x")
}
