package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/egressd/egressd/cluster"
	"github.com/egressd/egressd/internal/config"
	"github.com/egressd/egressd/secrets"
)

const secretsUsage = `Usage: egressd secrets COMMAND [flags]

Commands:
  list [--all] [--json]          keys, versions and times (never values); --all shows default secrets
  create KEY [--allow-empty]     create a secret; the value is read from standard input (empty: refused)
  delete KEY                     delete a secret; functions get 404 from then on
  init --file F --key-file K [--defaults FILE]
                                 create a new key file and an empty store (optionally seeded)
  rotate-key --file F --key-file K --new-key-file NEW
                                 generate a new key into NEW and re-encrypt the store under it
  reseal --config C              cluster mode: re-seal every secret in etcd under secrets.key_file,
                                 opening them with it or secrets.previous_key_file (key rotation)
  migrate --from-file F --key-file K --config C [--overwrite]
                                 copy a file store into etcd (cluster mode of config C), versions
                                 and times kept; existing secrets are kept unless --overwrite

list, create and delete talk to the running egressd's admin API (--admin URL, --token-file
FILE or EGRESSD_ADMIN_TOKEN); with --file and --key-file (or EGRESSD_SECRETS_KEY) they work
on the file directly, for provisioning when no egressd runs.
`

func runSecrets(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g, args, code, ok := splitGroup("secrets", secretsUsage, args, stderr)
	if !ok {
		return code
	}
	cmd := g.cmd
	fs := g.flagSet()
	af := addAdminFlags(fs)
	file := fs.String("file", "", "work on this secrets `file` directly, not through a running egressd")
	keyFile := fs.String("key-file", "", "the master key `file` for --file (or EGRESSD_SECRETS_KEY)")
	all := fs.Bool("all", false, "list: include default secrets")
	asJSON := fs.Bool("json", false, "list: print JSON")
	defaults := fs.String("defaults", "", "init: seed the store with the key: value pairs of this YAML or JSON `file`")
	newKeyFile := fs.String("new-key-file", "", "rotate-key: where to write the new key (must not exist)")
	allowEmpty := fs.Bool("allow-empty", false, "create: accept an empty value")
	fromFile := fs.String("from-file", "", "migrate: the secrets `file` to copy into etcd")
	configPath := configFlag(fs)
	overwrite := fs.Bool("overwrite", false, "migrate: replace secrets that already exist in etcd")
	pos, code, ok := parseFlags(fs, args)
	if !ok {
		return code
	}
	fail, usage := g.fail, g.usage
	if code, ok := g.checkArgs(pos, map[string]int{"list": 0, "create": 1, "delete": 1, "init": 0, "rotate-key": 0, "migrate": 0, "reseal": 0}); !ok {
		return code
	}

	switch cmd {
	case "init":
		if *file == "" || *keyFile == "" {
			return usage("give --file and --key-file: both are created, neither may exist")
		}
		seed, err := readDefaults(*defaults)
		if err != nil {
			return fail(err)
		}
		return doInit(*file, *keyFile, seed, stdout, fail)
	case "rotate-key":
		if *file == "" || *keyFile == "" || *newKeyFile == "" {
			return usage("give --file, --key-file (the current key) and --new-key-file (created, must not exist)")
		}
		return doRotate(ctx, *file, *keyFile, *newKeyFile, stdout, fail)
	case "reseal":
		if *configPath == "" {
			return usage("give --config (the cluster-mode configuration, with the new key as secrets.key_file and the old as previous_key_file)")
		}
		return doReseal(ctx, *configPath, stdout, stderr, fail)
	case "migrate":
		if *fromFile == "" || *keyFile == "" || *configPath == "" {
			return usage("give --from-file (the secrets file), --key-file (its key) and --config (the cluster-mode configuration)")
		}
		return doMigrate(ctx, *fromFile, *keyFile, *configPath, *overwrite, stdout, stderr, fail)
	}

	var value string
	if cmd == "create" {
		data, err := io.ReadAll(io.LimitReader(os.Stdin, secrets.MaxValueLen+2))
		if err != nil {
			return fail(err)
		}
		value = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if value == "" && !*allowEmpty {
			return usage("the value on standard input is empty; pipe it in (echo -n \"$TOKEN\" | egressd secrets create KEY), or pass --allow-empty to store an empty secret")
		}
	}

	if *file != "" {
		store, err := openFileStore(*file, *keyFile, stderr)
		if err != nil {
			return fail(err)
		}
		switch cmd {
		case "list":
			list, err := store.List(*all)
			if err != nil {
				return fail(err)
			}
			printSecrets(stdout, list, *asJSON)
		case "create":
			info, err := store.Create(ctx, pos[0], value)
			if err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "created %s (version %d)\n", info.Key, info.Version)
		case "delete":
			if err := store.Delete(ctx, pos[0]); err != nil {
				return fail(err)
			}
			fmt.Fprintf(stdout, "deleted %s\n", pos[0])
		}
		return exitOK
	}

	c, err := af.client()
	if err != nil {
		return usage(err.Error())
	}
	switch cmd {
	case "list":
		path := "/v1/secrets"
		if *all {
			path += "?all=true"
		}
		var resp struct{ Secrets []secrets.Info }
		if err := c.get(ctx, path, &resp); err != nil {
			return fail(err)
		}
		printSecrets(stdout, resp.Secrets, *asJSON)
	case "create":
		body, _ := json.Marshal(map[string]string{"key": pos[0], "value": value})
		var info secrets.Info
		if err := c.do(ctx, "POST", "/v1/secrets", bytes.NewReader(body), &info); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "created %s (version %d)\n", info.Key, info.Version)
	case "delete":
		if err := c.do(ctx, "DELETE", "/v1/secrets/"+pos[0], nil, nil); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "deleted %s\n", pos[0])
	}
	return exitOK
}

func openFileStore(file, keyFile string, stderr io.Writer) (*secrets.Store, error) {
	warn := func(msg string) { fmt.Fprintln(stderr, "warning:", msg) }
	key, err := readMasterKey(keyFile, "give --key-file or set EGRESSD_SECRETS_KEY", warn)
	if err != nil {
		return nil, err
	}
	return secrets.Open(secrets.Options{File: file, Key: key})
}

func doInit(file, keyFile string, seed map[string]string, stdout io.Writer, fail func(error) int) int {
	if _, err := os.Stat(file); err == nil {
		return fail(fmt.Errorf("%s exists; egressd never overwrites a secrets file", file))
	}
	key, err := secrets.GenerateKey()
	if err != nil {
		return fail(err)
	}
	if err := secrets.WriteKeyFile(keyFile, key); err != nil {
		return fail(err)
	}
	if err := secrets.Create(file, key, seed, time.Now()); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "created %s (key id %s) and %s with %d default secret(s)\n", keyFile, key.ID(), file, len(seed))
	return exitOK
}

func doRotate(ctx context.Context, file, keyFile, newKeyFile string, stdout io.Writer, fail func(error) int) int {
	store, err := openFileStore(file, keyFile, io.Discard)
	if err != nil {
		return fail(err)
	}
	key, err := secrets.GenerateKey()
	if err != nil {
		return fail(err)
	}
	if err := secrets.WriteKeyFile(newKeyFile, key); err != nil {
		return fail(err)
	}
	if err := store.Rotate(ctx, key); err != nil {
		return fail(fmt.Errorf("the new key is in %s but the store was not re-encrypted: %w", newKeyFile, err))
	}
	fmt.Fprintf(stdout, "re-encrypted %s under the new key in %s (key id %s).\n"+
		"Now set secrets.key_file to %s and secrets.previous_key_file to %s, and restart egressd;\n"+
		"once every egressd runs with the new key, remove previous_key_file and the old key.\n",
		file, newKeyFile, key.ID(), newKeyFile, keyFile)
	return exitOK
}

// doMigrate copies every secret of a file store, defaults included, into the
// secret store on etcd that the config's cluster section names.
func doMigrate(ctx context.Context, from, keyFile, configPath string, overwrite bool, stdout, stderr io.Writer, fail func(error) int) int {
	c, err := config.LoadFile(configPath)
	if err != nil {
		return fail(err)
	}
	dst, closeStore, err := openSharedSecrets(ctx, c, stderr)
	if err != nil {
		return fail(err)
	}
	defer closeStore()
	src, err := openFileStore(from, keyFile, stderr)
	if err != nil {
		return fail(err)
	}
	list, err := src.List(true)
	if err != nil {
		return fail(err)
	}
	copied, kept := 0, 0
	for _, info := range list {
		sec, err := src.Get(info.Key)
		if err != nil {
			return fail(err)
		}
		ok, err := dst.Import(ctx, sec, overwrite)
		if err != nil {
			return fail(fmt.Errorf("%s: %w (%d copied before it)", info.Key, err, copied))
		}
		if ok {
			copied++
			fmt.Fprintf(stdout, "copied %s (version %d)\n", info.Key, sec.Version)
		} else {
			kept++
			fmt.Fprintf(stdout, "kept %s: it exists in etcd (--overwrite replaces it)\n", info.Key)
		}
	}
	fmt.Fprintf(stdout, "%d secret(s) copied into etcd under %ssecrets/, %d kept\n", copied, c.Cluster.Etcd.Prefix, kept)
	return exitOK
}

// openSharedSecrets opens the secret store on etcd that c's cluster section names,
// for a command: no watch runs, every read is of what etcd held when it opened.
func openSharedSecrets(ctx context.Context, c *config.Config, stderr io.Writer) (*secrets.Store, func(), error) {
	if !c.SecretsShared() {
		return nil, nil, fmt.Errorf("%s is not in cluster mode with secrets on etcd: set cluster.etcd.endpoints and secrets.key_file", c.File)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	key, prev, err := secretsKeys(c, log)
	if err != nil {
		return nil, nil, err
	}
	cl, err := cluster.Connect(ctx, clusterConfig(c.Cluster.Etcd), log, nil)
	if err != nil {
		return nil, nil, err
	}
	remote, err := cluster.NewSecrets(ctx, cl)
	if err == nil {
		var s *secrets.Store
		if s, err = secrets.OpenShared(secrets.SharedOptions{Remote: remote, Key: key, PreviousKey: prev}); err == nil {
			return s, func() { cl.Close() }, nil
		}
	}
	cl.Close()
	return nil, nil, err
}

// doReseal re-seals every secret on etcd under the config's key.
func doReseal(ctx context.Context, configPath string, stdout, stderr io.Writer, fail func(error) int) int {
	c, err := config.LoadFile(configPath)
	if err != nil {
		return fail(err)
	}
	store, closeStore, err := openSharedSecrets(ctx, c, stderr)
	if err != nil {
		return fail(err)
	}
	defer closeStore()
	if err := store.Reseal(ctx); err != nil {
		return fail(fmt.Errorf("%w; the secrets not yet re-sealed still open with secrets.previous_key_file: run reseal again", err))
	}
	fmt.Fprintf(stdout, "re-sealed %d secret(s) under %s; once every replica runs with it, remove previous_key_file\n", store.Len(), c.Secrets.KeyFile)
	return exitOK
}

// readDefaults reads a YAML (or JSON) map of default secrets.
func readDefaults(path string) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]string
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil && err != io.EOF {
		return nil, fmt.Errorf("%s: the defaults are a map of key: value strings", path)
	}
	return m, nil
}

func printSecrets(w io.Writer, list []secrets.Info, asJSON bool) {
	if asJSON {
		printJSON(w, map[string]any{"secrets": list})
		return
	}
	if len(list) == 0 {
		fmt.Fprintln(w, "no secrets")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVERSION\tCREATED (UTC)\tUPDATED (UTC)\t")
	for _, s := range list {
		def := ""
		if s.Default {
			def = "default"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", s.Key, s.Version, s.Created.UTC().Format(time.DateTime), s.Updated.UTC().Format(time.DateTime), def)
	}
	tw.Flush()
}
