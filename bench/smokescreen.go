package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
)

// smokescreenVersion is the Smokescreen release the bench builds from the Go module
// proxy.
const smokescreenVersion = "github.com/stripe/smokescreen@v0.1.0"

// startSmokescreen builds Stripe's Smokescreen (go install, from the module proxy)
// and runs it with only the loopback targets allowed (--allow-address; with no
// egress ACL file it would allow public hosts too, which the bench never asks for),
// its resolver a dead loopback port, and its log (one line per request) in a file.
func startSmokescreen(dir string, targets []string) (*peer, error) {
	sd := filepath.Join(dir, "smokescreen")
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return nil, err
	}
	bin := filepath.Join(sd, "smokescreen")
	install := exec.Command("go", "install", smokescreenVersion)
	install.Env = append(os.Environ(), "GOBIN="+sd, "GOFLAGS=-trimpath")
	if out, err := install.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("smokescreen: %w (go install %s: %v: %s)", errNotInstalled, smokescreenVersion, err, out)
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"--listen-ip", host, "--listen-port", port, "--resolver-address", "127.0.0.1:1"}
	for _, t := range targets {
		args = append(args, "--allow-address", t)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = ownGroup()
	cmd.Stderr, _ = os.Create(filepath.Join(sd, "smokescreen.log"))
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &peer{name: "smokescreen", addr: addr, cmd: cmd}
	return p, waitListening(addr, p)
}
