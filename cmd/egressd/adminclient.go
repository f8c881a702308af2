package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/egressd/egressd/admin"
)

// adminFlags are the flags of every command that talks to a running egressd.
type adminFlags struct {
	url       *string
	tokenFile *string
}

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		url:       fs.String("admin", "http://127.0.0.1:9091", "the running egressd's admin API `URL`"),
		tokenFile: fs.String("token-file", "", "the admin token `file`; if empty, $EGRESSD_ADMIN_TOKEN"),
	}
}

// adminClient calls a running egressd's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

func (f adminFlags) client() (*adminClient, error) {
	token := os.Getenv("EGRESSD_ADMIN_TOKEN")
	if *f.tokenFile != "" {
		var err error
		if token, err = admin.ReadToken(*f.tokenFile); err != nil {
			return nil, err
		}
	}
	if token == "" {
		return nil, errors.New("no admin token: pass --token-file FILE or set EGRESSD_ADMIN_TOKEN")
	}
	u, err := url.Parse(*f.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--admin %q is not an http:// URL", *f.url)
	}
	// The admin API is reached directly, never through a proxy in the environment.
	tr := &http.Transport{Proxy: nil}
	return &adminClient{base: strings.TrimSuffix(u.String(), "/"), token: token, http: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}, nil
}

// get calls GET path and decodes the JSON answer into v. A non-2xx answer is an
// error carrying the API's message.
func (c *adminClient) get(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodGet, path, nil, v)
}

func (c *adminClient) do(ctx context.Context, method, path string, body io.Reader, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling the admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("admin API: %s (%d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("admin API: %s", resp.Status)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(data, v)
}
