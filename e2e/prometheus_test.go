package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestAlertRules checks the shipped alerting rules with promtool, and runs their
// unit tests.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: apt-get install prometheus (.ci/run does)")
	}
	dir := "../configs/prometheus"
	for _, args := range [][]string{{"check", "rules", "egressd-alerts.yaml"}, {"test", "rules", "egressd-alerts.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// TestRealPrometheus starts a real Prometheus on loopback, lets it scrape egressd, and
// asks its HTTP API whether egressd_requests_total counts the requests made here.
func TestRealPrometheus(t *testing.T) {
	t.Parallel()
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
	}
	origin := httpOrigin(t)
	d := startDaemon(t, daemonConfig{files: map[string]string{"allow.d/a.txt": origin.Listener.Addr().String() + "\n"}})
	for i := 0; i < 3; i++ {
		if got := d.status("http://" + origin.Listener.Addr().String() + "/"); got != 200 {
			t.Fatalf("allowed request = %d", got)
		}
	}
	for i := 0; i < 2; i++ {
		d.status("http://denied.invalid/")
	}

	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := ln.Addr().String()
	ln.Close()
	writeFile(t, filepath.Join(dir, "prometheus.yml"), fmt.Sprintf(
		"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [%q]\nscrape_configs:\n  - job_name: egressd\n    static_configs:\n      - targets: [%q]\n",
		mustAbs(t, "../configs/prometheus/egressd-alerts.yaml"), d.metrics))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, prom,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web,
	)
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})

	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + web + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	want := map[string]float64{
		`egressd_requests_total{job="egressd",kind="http",decision="allow"}`: 3,
		`egressd_requests_total{job="egressd",kind="http",decision="deny"}`:  2,
		`egressd_policy_rules{job="egressd"}`:                                1,
	}
	deadline := time.Now().Add(60 * time.Second)
	for q, v := range want {
		for {
			got, ok := query(q)
			if ok && got == v {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Prometheus answers %s = %v (ok=%v); want %v", q, got, ok, v)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
