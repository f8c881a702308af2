// Package console serves egressd's web console from the admin listener: pages
// rendered on the server (html/template) over the admin API, with a little plain
// JavaScript, everything embedded in the binary.
//
// The console implements no rule of its own. A signed-in browser reaches the admin
// API through /console/api/, which checks the session (and, for a change, the CSRF
// token bound to it) and hands the request to the API with the admin token, in
// process; the pages read the same API. Sign-in takes the admin token and sets a
// session cookie (HttpOnly, SameSite=Strict, Secure on TLS) that expires after
// SessionTTL. Every answer forbids framing, referrers and inline script.
package console

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/egressd/egressd/internal/defaults"
)

//go:embed web
var webFS embed.FS

// Options configure the console.
type Options struct {
	// Token is the admin token: what sign-in takes, and what the console sends the API.
	Token string
	// API is the admin API (bearer-authenticated).
	API http.Handler
	// SessionTTL is how long a sign-in lasts. If zero, 8h.
	SessionTTL time.Duration
	// Secure marks the cookie Secure: the listener has TLS.
	Secure bool
	// Version is shown on the overview.
	Version string
	// Status, if set, is read for the overview.
	Status func() Status
	Now    func() time.Time
	Logger *slog.Logger
}

// Console is the console's handler.
type Console struct {
	opts  Options
	token [sha256.Size]byte
	pages *template.Template
	mux   *http.ServeMux

	mu       sync.Mutex
	sessions map[string]session // by the cookie's value

	counts counts // the request counts a minute apart, for the overview's hour
}

type session struct {
	csrf    string
	expires time.Time
}

// maxSessions bounds the sessions kept: past it the oldest goes.
const maxSessions = 1000

const cookieName = "egressd_session"

// New returns the console.
func New(opts Options) (*Console, error) {
	if opts.Token == "" {
		return nil, errors.New("console: no admin token")
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = defaults.ConsoleSessionTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	pages, err := template.ParseFS(webFS, "web/*.html")
	if err != nil {
		return nil, err
	}
	c := &Console{opts: opts, token: sha256.Sum256([]byte(opts.Token)), pages: pages, mux: http.NewServeMux(), sessions: map[string]session{}}
	static, _ := fs.Sub(webFS, "web/static")
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /{$}", c.signInPage)
	c.mux.HandleFunc("POST /signin", c.signIn)
	c.mux.HandleFunc("POST /signout", c.signedIn(c.signOut))
	c.mux.HandleFunc("GET /overview", c.signedIn(c.overview))
	c.mux.HandleFunc("GET /allowlist", c.signedIn(c.allowlist))
	c.mux.HandleFunc("POST /allowlist/add", c.signedIn(c.allowlistAdd))
	c.mux.HandleFunc("POST /allowlist/remove", c.signedIn(c.allowlistRemove))
	c.mux.HandleFunc("GET /schedules", c.signedIn(c.schedules))
	c.mux.HandleFunc("POST /schedules/create", c.signedIn(c.schedulesCreate))
	c.mux.HandleFunc("POST /schedules/run", c.signedIn(c.schedulesRun))
	c.mux.HandleFunc("POST /schedules/delete", c.signedIn(c.schedulesDelete))
	c.mux.HandleFunc("GET /denials", c.signedIn(c.denials))
	c.mux.HandleFunc("POST /denials/allow", c.signedIn(c.denialsAllow))
	c.mux.HandleFunc("GET /trace", c.signedIn(c.trace))
	c.mux.HandleFunc("POST /trace/add", c.signedIn(c.traceAdd))
	c.mux.HandleFunc("GET /secrets", c.signedIn(c.secrets))
	c.mux.HandleFunc("POST /secrets/create", c.signedIn(c.secretsCreate))
	c.mux.HandleFunc("POST /secrets/delete", c.signedIn(c.secretsDelete))
	c.mux.HandleFunc("/console/api/", c.signedIn(c.api))
	return c, nil
}

// ServeHTTP sets the headers every answer carries and routes.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// current returns the request's session, if it has a live one.
func (c *Console) current(r *http.Request) (string, session, bool) {
	ck, err := r.Cookie(cookieName)
	if err != nil {
		return "", session{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sessions[ck.Value]
	if !ok {
		return "", session{}, false
	}
	if !c.opts.Now().Before(s.expires) {
		delete(c.sessions, ck.Value)
		return "", session{}, false
	}
	return ck.Value, s, true
}

// signedIn serves next to a signed-in browser only: a page request without a live
// session goes to sign-in, an API request gets 401; a change (any method but GET
// and HEAD) must carry the session's CSRF token, in the X-CSRF-Token header or the
// csrf form field, or it gets 403.
func (c *Console) signedIn(next func(http.ResponseWriter, *http.Request, session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, s, ok := c.current(r)
		if !ok {
			if strings.HasPrefix(r.URL.Path, "/console/api/") {
				writeJSONError(w, http.StatusUnauthorized, "not signed in, or the session expired: sign in again")
				return
			}
			http.Redirect(w, r, "/?expired=1", http.StatusSeeOther)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			got := r.Header.Get("X-CSRF-Token")
			if got == "" {
				got = r.PostFormValue("csrf")
			}
			if subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
				writeJSONError(w, http.StatusForbidden, "missing or wrong CSRF token: reload the page and try again")
				return
			}
		}
		next(w, r, s)
	}
}

func (c *Console) signInPage(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := c.current(r); ok {
		http.Redirect(w, r, "/overview", http.StatusSeeOther)
		return
	}
	msg := ""
	if r.URL.Query().Get("expired") != "" {
		msg = "Your session ended. Sign in again."
	}
	c.render(w, http.StatusOK, "signin.html", map[string]any{"Message": msg})
}

func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	sum := sha256.Sum256([]byte(r.PostFormValue("token")))
	if subtle.ConstantTimeCompare(sum[:], c.token[:]) != 1 {
		c.opts.Logger.Warn("console sign-in refused: wrong token", "client", r.RemoteAddr)
		c.render(w, http.StatusUnauthorized, "signin.html", map[string]any{"Message": "That is not the admin token (admin.token_file)."})
		return
	}
	id, csrf := randomHex(32), randomHex(32)
	now := c.opts.Now()
	c.mu.Lock()
	for k, s := range c.sessions {
		if !now.Before(s.expires) {
			delete(c.sessions, k)
		}
	}
	if len(c.sessions) >= maxSessions {
		var oldest string
		for k, s := range c.sessions {
			if oldest == "" || s.expires.Before(c.sessions[oldest].expires) {
				oldest = k
			}
		}
		delete(c.sessions, oldest)
	}
	c.sessions[id] = session{csrf: csrf, expires: now.Add(c.opts.SessionTTL)}
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: c.opts.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(c.opts.SessionTTL / time.Second)})
	http.Redirect(w, r, "/overview", http.StatusSeeOther)
}

func (c *Console) signOut(w http.ResponseWriter, r *http.Request, _ session) {
	if id, _, ok := c.current(r); ok {
		c.mu.Lock()
		delete(c.sessions, id)
		c.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", HttpOnly: true, Secure: c.opts.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// api hands a signed-in request to the admin API, with the admin token.
func (c *Console) api(w http.ResponseWriter, r *http.Request, _ session) {
	r2 := r.Clone(r.Context())
	r2.URL = &url.URL{Path: strings.TrimPrefix(r.URL.Path, "/console/api"), RawQuery: r.URL.RawQuery}
	r2.RequestURI = r2.URL.RequestURI()
	r2.Header.Del("Cookie")
	r2.Header.Set("Authorization", "Bearer "+c.opts.Token)
	c.opts.API.ServeHTTP(w, r2)
}

// call sends one request to the admin API in process and decodes its answer into
// out (if not nil); an answer other than 2xx is an error with the API's message.
func (c *Console) call(r *http.Request, method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		json.NewEncoder(&body).Encode(in)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.opts.Token)
	req.Header.Set("Content-Type", "application/json")
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	c.opts.API.ServeHTTP(rec, req)
	if rec.status < 200 || rec.status > 299 {
		var e struct{ Error string }
		json.Unmarshal(rec.body.Bytes(), &e)
		if e.Error == "" {
			e.Error = fmt.Sprintf("the admin API answered %d", rec.status)
		}
		return errors.New(e.Error)
	}
	if out != nil && rec.body.Len() > 0 {
		return json.Unmarshal(rec.body.Bytes(), out)
	}
	return nil
}

// recorder is the in-process answer of the API to a page's call.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(status int)      { r.status = status }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

// render writes a page with the layout; data gets the CSRF token of the session,
// if there is one, under "CSRF".
func (c *Console) render(w http.ResponseWriter, status int, name string, data map[string]any) {
	var buf bytes.Buffer
	if err := c.pages.ExecuteTemplate(&buf, name, data); err != nil {
		c.opts.Logger.Error("console page", "page", name, "error", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	io.Copy(w, &buf)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
