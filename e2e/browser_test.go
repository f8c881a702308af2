package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// newBrowser starts a real headless Chromium (Debian's chromium; .ci/run installs
// it) in the time zone tz and returns its context. It reaches loopback only: every
// other host goes to a proxy that is not there, and no name resolves.
func newBrowser(t *testing.T, tz string) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium: install Debian's chromium package (.ci/run does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Env("TZ="+tz), chromedp.Flag("lang", "en-US"),
		chromedp.Flag("proxy-server", "http://127.0.0.1:9"), // loopback itself bypasses proxies
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

func run[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitText waits (10 s at most) until the element's text contains want.
func waitText(t *testing.T, ctx context.Context, sel, want string) string {
	t.Helper()
	var got string
	for i := 0; i < 100; i++ {
		got, _ = chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if strings.Contains(got, want) {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never showed %q; it shows %q", sel, want, got)
	return ""
}

// TestConsoleInBrowser drives the console in headless Chromium, in Tokyo time
// (UTC+9): sign-in (a wrong token refused), the schedule form (an invalid cron
// shows what is wrong and valid examples, a valid one the next runs in the
// browser's time), create, run now and the STATE column, the tab order and labels
// of the form, a change without the CSRF token refused, sign-out.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(fn.Close)
	writeFile(t, filepath.Join(dir, "functions.yaml"), "functions:\n  - name: report\n    url: "+fn.URL+"/\n    state: productive\n  - name: wip\n    url: "+fn.URL+"/\n    state: draft\n")
	writeFile(t, filepath.Join(dir, "admin.token"), "browser-token\n")
	d := startDaemon(t, daemonConfig{extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\nscheduler:\n  functions_file: %s\n  state_file: %s\n",
		filepath.Join(dir, "admin.token"), filepath.Join(dir, "functions.yaml"), filepath.Join(dir, "schedules.json"))})
	base := "http://" + d.admin
	ctx := newBrowser(t, "Asia/Tokyo")

	do(t, ctx, chromedp.Navigate(base+"/"), chromedp.SendKeys(chromedp.CSS("#token"), "wrong"), chromedp.Click(chromedp.CSS("button[type=submit]")))
	waitText(t, ctx, "[role=alert]", "not the admin token")
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#token"), "browser-token"), chromedp.Click(chromedp.CSS("button[type=submit]")))
	waitText(t, ctx, "h1", "Overview")

	do(t, ctx, chromedp.Navigate(base+"/schedules"))
	if opt := run(t, ctx, chromedp.Evaluate[bool](`document.querySelector("#function option[value=wip]").disabled`)); !opt {
		t.Error("the draft function can be chosen")
	}
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#cron"), "* * * * * *"))
	waitText(t, ctx, "#cron-help", "six fields")
	waitText(t, ctx, "#cron-help", "valid examples")
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector("#cron").value = ""`), chromedp.SendKeys(chromedp.CSS("#cron"), "30 6 * * *"))
	help := waitText(t, ctx, "#cron-help", "Next, in your local time")
	if !strings.Contains(help, "3:30:00 PM") { // 06:30 UTC is 15:30 in Tokyo
		t.Errorf("the next runs of 30 6 * * * in Tokyo: %q; want 3:30:00 PM", help)
	}
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#payload"), `{"report": "daily"`))
	waitText(t, ctx, "#payload-help", "not valid JSON")
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#payload"), `}`))
	waitText(t, ctx, "#payload-help", "19 / 8000 characters, valid JSON")

	// Every control of the form labelled, and reached with Tab in order.
	unlabelled := run(t, ctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll("#schedule-form select, #schedule-form input:not([type=hidden]), #schedule-form textarea")).filter(e => e.labels.length === 0).length`))
	if unlabelled != 0 {
		t.Errorf("%d controls of the schedule form have no label", unlabelled)
	}
	do(t, ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector("#function").focus()`))
	var order []string
	for range 3 {
		do(t, ctx, chromedp.KeyEvent(kb.Tab))
		order = append(order, run(t, ctx, chromedp.Evaluate[string](`document.activeElement.id || document.activeElement.tagName + ":" + document.activeElement.textContent`)))
	}
	if strings.Join(order, ",") != "cron,payload,BUTTON:Create schedule" {
		t.Errorf("tab order from the function: %v; want cron, payload, the button", order)
	}

	do(t, ctx, chromedp.Click(chromedp.CSS("#schedule-form button[type=submit]")))
	waitText(t, ctx, "[role=status]", "created: report on")
	row := waitText(t, ctx, "tbody tr", "never run")
	if !strings.Contains(row, "3:30:00 PM") {
		t.Errorf("the row's next invocation in Tokyo time: %q", row)
	}
	do(t, ctx, chromedp.Click(chromedp.CSS("tbody tr form[action='/schedules/run'] button")))
	waitText(t, ctx, "[role=status]", "ran: success")
	waitText(t, ctx, "tbody tr", "success")

	// A change without the CSRF token, from the page's own origin: refused.
	status := run(t, ctx, chromedp.Evaluate[int](`fetch("/allowlist/add", {method: "POST", body: new URLSearchParams({rule: "x.example.com"})}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if status != 403 {
		t.Errorf("a form posted without the CSRF token: %d; want 403", status)
	}

	do(t, ctx, chromedp.Click(chromedp.CSS("form.signout button")))
	waitText(t, ctx, "label[for=token]", "Admin token")
	do(t, ctx, chromedp.Navigate(base+"/schedules"))
	waitText(t, ctx, "[role=alert]", "Your session ended")
}

// TestConsolePagesInBrowser drives the other pages in Chromium: a secret created
// from the page is nowhere in the DOM afterwards and is deleted after the
// confirmation; a domain added on the allowlist page is in force through the proxy
// at once; a denial is allowed from the Denials page. It takes a screenshot of
// every page at 1280x800 and at a phone's 390x844; with EGRESSD_SCREENSHOTS=1 it
// writes them to docs/console/ (the README shows them):
//
//	EGRESSD_SCREENSHOTS=1 go test ./e2e -run TestConsolePagesInBrowser -count=1
func TestConsolePagesInBrowser(t *testing.T) {
	t.Parallel()
	origin := httpOrigin(t)
	target := origin.Listener.Addr().String()
	other := httpOrigin(t)
	denied := other.Listener.Addr().String()
	dir := t.TempDir()
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(fn.Close)
	writeFile(t, filepath.Join(dir, "functions.yaml"), "functions:\n  - name: nightly-report\n    url: "+fn.URL+"/\n    state: productive\n  - name: wip\n    url: "+fn.URL+"/\n    state: draft\n")
	s := provisionSecrets(t, dir, map[string]string{"oauth-token": "tok-1"})
	d := startDaemon(t, daemonConfig{
		files: map[string]string{"allow.d/main.txt": "api.github.com\n*.stripe.com\n"},
		extra: secretsConfig(s, "") + fmt.Sprintf("scheduler:\n  functions_file: %s\n  state_file: %s\nmanaged_allowlist:\n  file: %s\n",
			filepath.Join(dir, "functions.yaml"), filepath.Join(dir, "schedules.json"), filepath.Join(dir, "managed.txt")),
	})
	base := "http://" + d.admin
	ctx := newBrowser(t, "Europe/Berlin")
	shots := map[string][]byte{}
	shoot := func(name string) {
		t.Helper()
		for _, size := range []struct {
			suffix string
			w, h   int64
		}{{"", 1280, 800}, {"-phone", 390, 844}} {
			do(t, ctx, chromedp.EmulateViewport(size.w, size.h))
			png := run(t, ctx, chromedp.CaptureScreenshot())
			if len(png) < 1000 || string(png[1:4]) != "PNG" {
				t.Errorf("the screenshot of %s%s is not a PNG", name, size.suffix)
			}
			shots[name+size.suffix+".png"] = png
		}
		do(t, ctx, chromedp.EmulateViewport(1280, 800))
	}

	do(t, ctx, chromedp.Navigate(base+"/"))
	shoot("signin")
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#token"), s.token), chromedp.Click(chromedp.CSS("button[type=submit]")))
	waitText(t, ctx, "h1", "Overview")
	shoot("overview")

	// Secrets: the value goes in, and never comes back.
	const value = "whsec-browser-value-9931"
	do(t, ctx, chromedp.Navigate(base+"/secrets"), chromedp.SendKeys(chromedp.CSS("#key"), "webhook-secret"),
		chromedp.SendKeys(chromedp.CSS("#value"), value), chromedp.Click(chromedp.CSS("form.add button[type=submit]")))
	waitText(t, ctx, "[role=status]", "webhook-secret created (version 1)")
	shoot("secrets")
	for _, path := range []string{"/secrets", "/secrets?all=true", "/overview"} {
		do(t, ctx, chromedp.Navigate(base+path))
		html := run(t, ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML + location.href`))
		if strings.Contains(html, value) || strings.Contains(html, "tok-1") {
			t.Errorf("a secret's value is in the DOM of %s", path)
		}
	}
	do(t, ctx, chromedp.Navigate(base+"/secrets"), chromedp.Click(chromedp.CSS(`button[aria-label="Delete webhook-secret"]`)))
	waitText(t, ctx, "[role=alert]", "Delete the secret webhook-secret? Functions reading it get 404 at once")
	do(t, ctx, chromedp.Click(chromedp.CSS("main form button[type=submit]")))
	waitText(t, ctx, "[role=status]", "webhook-secret deleted.")

	// The allowlist: a domain added on the page is in force through the proxy.
	if got := d.status("http://" + target + "/"); got != 403 {
		t.Fatalf("before: %d", got)
	}
	do(t, ctx, chromedp.Navigate(base+"/allowlist"), chromedp.SendKeys(chromedp.CSS("#rule"), target), chromedp.Click(chromedp.CSS("form.add button[type=submit]")))
	waitText(t, ctx, "[role=status]", target+" added; in force after")
	if took := d.waitStatus("http://"+target+"/", 200); took > time.Second {
		t.Errorf("the domain added on the page was in force after %s; want within 1s", took)
	}
	shoot("allowlist")

	// Denials: allow one from the page.
	if got := d.status("http://" + denied + "/"); got != 403 {
		t.Fatalf("the other origin before: %d", got)
	}
	do(t, ctx, chromedp.Navigate(base+"/denials"))
	waitText(t, ctx, "tbody", denied)
	shoot("denials")
	do(t, ctx, chromedp.Click(chromedp.CSS(`form[action="/denials/allow"] button`)))
	waitText(t, ctx, "[role=alert]", "Add "+denied+" to the allowlist?")
	do(t, ctx, chromedp.Click(chromedp.CSS("main form button[type=submit]")))
	waitText(t, ctx, "[role=status]", denied+" allowed.")
	if got := d.status("http://" + denied + "/"); got != 200 {
		t.Errorf("after allowing it from the Denials page: %d; want 200", got)
	}

	// The schedules and trace pages, for their pictures.
	do(t, ctx, chromedp.Navigate(base+"/schedules"), chromedp.SendKeys(chromedp.CSS("#cron"), "0 7 * * 1-5"),
		chromedp.SendKeys(chromedp.CSS("#payload"), `{"report": "daily"}`), chromedp.Click(chromedp.CSS("#schedule-form button[type=submit]")))
	waitText(t, ctx, "[role=status]", "created")
	do(t, ctx, chromedp.Click(chromedp.CSS("tbody tr form[action='/schedules/run'] button")))
	waitText(t, ctx, "[role=status]", "ran: success")
	do(t, ctx, chromedp.SendKeys(chromedp.CSS("#cron"), "*/5 * * * * *"))
	waitText(t, ctx, "#cron-help", "valid examples")
	shoot("schedules")
	do(t, ctx, chromedp.Navigate(base+"/trace?url="+url.QueryEscape("http://"+target+"/")))
	waitText(t, ctx, "caption", "every hop allowed")
	shoot("trace")

	if os.Getenv("EGRESSD_SCREENSHOTS") != "" {
		out := filepath.Join("..", "docs", "console")
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, png := range shots {
			if err := os.WriteFile(filepath.Join(out, name), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %d screenshots to %s", len(shots), out)
	}
}

// TestConsoleSessionExpiry: a session past admin.session_ttl is sent back to
// sign-in.
func TestConsoleSessionExpiry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "expiry-token\n")
	d := startDaemon(t, daemonConfig{extra: fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  token_file: %s\n  session_ttl: 2s\n", filepath.Join(dir, "admin.token"))})
	base := "http://" + d.admin
	ctx := newBrowser(t, "UTC")
	do(t, ctx, chromedp.Navigate(base+"/"), chromedp.SendKeys(chromedp.CSS("#token"), "expiry-token"), chromedp.Click(chromedp.CSS("button[type=submit]")))
	waitText(t, ctx, "h1", "Overview")
	time.Sleep(2500 * time.Millisecond)
	do(t, ctx, chromedp.Navigate(base+"/schedules"))
	waitText(t, ctx, "[role=alert]", "Your session ended")
	if loc := run(t, ctx, chromedp.Location()); !strings.HasSuffix(loc, "/?expired=1") {
		t.Errorf("after expiry the browser is at %s; want the sign-in page", loc)
	}
}
