package scheduler

import (
	"bytes"
	"context"
	"io"
	"net/http"
)

// HTTPInvoker POSTs the payload to the function's URL, directly: a function in the
// same pod is called on loopback, never through a proxy from the environment.
type HTTPInvoker struct{}

var invokeClient = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// Invoke sends one invocation and returns the answer's status.
func (HTTPInvoker) Invoke(ctx context.Context, url string, payload []byte, header http.Header) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header = header
	resp, err := invokeClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}
