package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/egressd/egressd/admin"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/secrets"
)

// readMasterKey reads the secrets master key from keyFile, or, without one, from
// EGRESSD_SECRETS_KEY. ifMissing says how to give a key, in the caller's terms.
func readMasterKey(keyFile, ifMissing string, warn func(string)) (secrets.Key, error) {
	switch {
	case keyFile != "":
		return secrets.ReadKeyFile(keyFile, warn)
	case os.Getenv("EGRESSD_SECRETS_KEY") != "":
		key, err := secrets.ParseKey(os.Getenv("EGRESSD_SECRETS_KEY"))
		if err != nil {
			return secrets.Key{}, fmt.Errorf("EGRESSD_SECRETS_KEY: %w", err)
		}
		return key, nil
	}
	return secrets.Key{}, errors.New("no secrets key: " + ifMissing)
}

// secretsKeys reads the master key (secrets.key_file, or EGRESSD_SECRETS_KEY) and
// the previous key of a rotation, if any.
func secretsKeys(c *config.Config, log *slog.Logger) (secrets.Key, *secrets.Key, error) {
	warn := func(msg string) { log.Warn(msg) }
	key, err := readMasterKey(c.Secrets.KeyFile, "set secrets.key_file or EGRESSD_SECRETS_KEY", warn)
	if err != nil {
		return secrets.Key{}, nil, err
	}
	if c.Secrets.PreviousKeyFile == "" {
		return key, nil, nil
	}
	prev, err := secrets.ReadKeyFile(c.Secrets.PreviousKeyFile, warn)
	if err != nil {
		return secrets.Key{}, nil, err
	}
	return key, &prev, nil
}

// openSecrets opens the configured store and returns the runtime API for it; with no
// store configured, both are nil. With secrets.create_if_missing and create set, a
// missing store is created empty first; without create (egressd check), a missing
// store that would be created is not an error.
//
// In cluster mode the store is on remote (etcd); check, which dials nothing, passes
// none and gets none, once the keys are read.
func openSecrets(c *config.Config, log *slog.Logger, reg prometheus.Registerer, create bool, reserved func(string) string, remote secrets.Remote) (*secrets.Store, http.Handler, error) {
	if !c.SecretsOn() {
		return nil, nil, nil
	}
	key, prev, err := secretsKeys(c, log)
	if err != nil {
		return nil, nil, err
	}
	if c.SecretsShared() {
		if remote == nil {
			return nil, nil, nil
		}
		store, err := secrets.OpenShared(secrets.SharedOptions{Remote: remote, Key: key, PreviousKey: prev, Logger: log, Registerer: reg})
		if err != nil {
			return nil, nil, err
		}
		return runtimeAPI(c, store, reserved)
	}
	if c.Secrets.CreateIfMissing {
		if _, err := os.Stat(c.Secrets.File); errors.Is(err, fs.ErrNotExist) {
			if !create {
				return nil, nil, nil // check: serve would create it
			}
			if err := secrets.Create(c.Secrets.File, key, nil, time.Now()); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, nil, fmt.Errorf("creating the missing secrets file (secrets.create_if_missing): %w", err)
			}
			log.Info("secrets file created empty (secrets.create_if_missing)", "file", c.Secrets.File, "key_id", key.ID())
		}
	}
	store, err := secrets.Open(secrets.Options{File: c.Secrets.File, Key: key, PreviousKey: prev, LockTimeout: c.Secrets.LockTimeout, Logger: log, Registerer: reg})
	if err != nil {
		return nil, nil, err
	}
	return runtimeAPI(c, store, reserved)
}

func runtimeAPI(c *config.Config, store *secrets.Store, reserved func(string) string) (*secrets.Store, http.Handler, error) {
	token := ""
	var err error
	if c.Secrets.RuntimeTokenFile != "" {
		if token, err = admin.ReadToken(c.Secrets.RuntimeTokenFile); err != nil {
			return nil, nil, fmt.Errorf("secrets runtime token: %w", err)
		}
	}
	return store, secrets.RuntimeHandler(store, token, reserved), nil
}
