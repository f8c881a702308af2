package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/egressd/egressd/internal/config"
)

type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct{ Name string }
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Template struct {
			Metadata struct{ Annotations map[string]string }
			Spec     struct {
				SecurityContext struct {
					RunAsUser  int `yaml:"runAsUser"`
					RunAsGroup int `yaml:"runAsGroup"`
					FSGroup    int `yaml:"fsGroup"`
				} `yaml:"securityContext"`
				InitContainers []container `yaml:"initContainers"`
				Containers     []container
				Volumes        []struct {
					Name      string
					ConfigMap *struct{ Name string } `yaml:"configMap"`
					Secret    *struct {
						SecretName  string `yaml:"secretName"`
						DefaultMode int    `yaml:"defaultMode"`
					}
					PVC *struct {
						ClaimName string `yaml:"claimName"`
					} `yaml:"persistentVolumeClaim"`
				}
			}
		}
	}
}

type container struct {
	Name          string
	RestartPolicy string `yaml:"restartPolicy"`
	Args          []string
	Ports         []struct {
		Name          string
		ContainerPort int `yaml:"containerPort"`
	}
	Env          []struct{ Name, Value string }
	VolumeMounts []struct {
		Name      string
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	LivenessProbe   *probe `yaml:"livenessProbe"`
	ReadinessProbe  *probe `yaml:"readinessProbe"`
	SecurityContext struct {
		ReadOnlyRootFilesystem bool `yaml:"readOnlyRootFilesystem"`
		RunAsNonRoot           bool `yaml:"runAsNonRoot"`
		RunAsUser              *int `yaml:"runAsUser"`
		Capabilities           struct {
			Add, Drop []string
		}
	} `yaml:"securityContext"`
}

type probe struct {
	HTTPGet struct {
		Path string
		Port string
	} `yaml:"httpGet"`
}

var knownKinds = map[string]bool{
	"v1/ConfigMap": true, "v1/Secret": true, "v1/PersistentVolumeClaim": true, "v1/Service": true,
	"apps/v1/Deployment": true, "monitoring.coreos.com/v1/ServiceMonitor": true,
}

func loadManifests(t *testing.T) []object {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in configs/kubernetes")
	}
	var objs []object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var o object
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			if !knownKinds[o.APIVersion+"/"+o.Kind] {
				t.Errorf("%s document %d: apiVersion %q kind %q is not one this test knows", f, i, o.APIVersion, o.Kind)
			}
			if o.Metadata.Name == "" {
				t.Errorf("%s document %d: no metadata.name", f, i)
			}
			objs = append(objs, o)
		}
	}
	return objs
}

func find(objs []object, kind, name string) *object {
	for i := range objs {
		if objs[i].Kind == kind && (name == "" || objs[i].Metadata.Name == name) {
			return &objs[i]
		}
	}
	return nil
}

func port(t *testing.T, listen string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, c := range p {
		n = n*10 + int(c-'0')
	}
	return n
}

func TestKubernetesManifests(t *testing.T) {
	objs := loadManifests(t)
	cm := find(objs, "ConfigMap", "egressd-config")
	if cm == nil || cm.Data["egressd.yaml"] == "" {
		t.Fatal("no ConfigMap egressd-config with egressd.yaml")
	}
	cfgFile := filepath.Join(t.TempDir(), "egressd.yaml")
	os.WriteFile(cfgFile, []byte(cm.Data["egressd.yaml"]), 0o644)
	c, err := config.LoadFile(cfgFile)
	if err != nil {
		t.Fatalf("the ConfigMap's egressd.yaml does not load: %v", err)
	}

	dep := find(objs, "Deployment", "")
	if dep == nil {
		t.Fatal("no Deployment")
	}
	pod := &dep.Spec.Template.Spec
	var eg, fn *container
	for i := range pod.InitContainers {
		if pod.InitContainers[i].Name == "egressd" {
			eg = &pod.InitContainers[i]
		}
	}
	for i := range pod.Containers {
		if pod.Containers[i].Name == "function" {
			fn = &pod.Containers[i]
		}
	}
	if eg == nil || fn == nil {
		t.Fatal("the Deployment needs a function container and egressd as an init container (a native sidecar)")
	}
	// Interception: an init container with NET_ADMIN alone runs netns-setup before
	// egressd starts, excluding the user egressd runs as, and egressd listens where
	// the rules redirect to.
	var setup *container
	setupAt := slices.IndexFunc(pod.InitContainers, func(c container) bool { return slices.Contains(c.Args, "netns-setup") })
	if setupAt >= 0 {
		setup = &pod.InitContainers[setupAt]
	}
	switch {
	case setup == nil:
		t.Error("no init container runs egressd netns-setup: the allowlist would bind only code that honours HTTP_PROXY")
	case setupAt > slices.IndexFunc(pod.InitContainers, func(c container) bool { return c.Name == "egressd" }):
		t.Error("netns-setup must run before the egressd sidecar starts")
	case !slices.Equal(setup.SecurityContext.Capabilities.Add, []string{"NET_ADMIN"}) || !slices.Equal(setup.SecurityContext.Capabilities.Drop, []string{"ALL"}):
		t.Errorf("netns-setup's capabilities = %+v; want NET_ADMIN only", setup.SecurityContext.Capabilities)
	case setup.RestartPolicy == "Always":
		t.Error("netns-setup must run once and exit, not as a sidecar")
	}
	if setup != nil {
		uid := "65532"
		if i := slices.Index(setup.Args, "--exclude-uid"); i >= 0 {
			uid = setup.Args[i+1]
		}
		egressdUID := pod.SecurityContext.RunAsUser
		if eg.SecurityContext.RunAsUser != nil {
			egressdUID = *eg.SecurityContext.RunAsUser
		}
		if uid != fmt.Sprint(egressdUID) {
			t.Errorf("netns-setup excludes uid %s but egressd runs as %d: egressd's own connections would loop", uid, egressdUID)
		}
	}
	if c.Proxy.TransparentListen == "" || c.DNS.Listen == "" {
		t.Error("the config has no proxy.transparent_listen or dns.listen for the rules to redirect to")
	}
	// A native sidecar: started before the function, stopped after it.
	if eg.RestartPolicy != "Always" {
		t.Errorf("egressd's restartPolicy = %q; want Always (a native sidecar, Kubernetes 1.29+)", eg.RestartPolicy)
	}
	// A fresh volume must not crash-loop egressd: the store is created there.
	if c.Secrets.File != "" && !c.Secrets.CreateIfMissing {
		t.Error("the config has a secrets file on a volume but not secrets.create_if_missing: a fresh volume would crash-loop egressd")
	}
	// egressd (non-root) reads its key and token through the pod's fsGroup: the
	// Secret volumes must be group-readable and nothing more, and the fsGroup egressd's.
	sc := pod.SecurityContext
	if sc.FSGroup == 0 || sc.FSGroup != sc.RunAsGroup {
		t.Errorf("pod fsGroup %d, runAsGroup %d; want them equal, so that egressd's group reads the Secrets", sc.FSGroup, sc.RunAsGroup)
	}
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.DefaultMode != 0o440 {
			t.Errorf("Secret volume %s has defaultMode %04o; want 0440: egressd reads it through fsGroup, nobody else may",
				v.Name, v.Secret.DefaultMode)
		}
	}

	ports := map[string]int{}
	for _, p := range eg.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["proxy"] != port(t, c.Proxy.Listen) || ports["metrics"] != port(t, c.Metrics.Listen) {
		t.Errorf("egressd container ports %v; the config listens on %s (proxy) and %s (metrics)", ports, c.Proxy.Listen, c.Metrics.Listen)
	}
	if a := dep.Spec.Template.Metadata.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "9090" {
		t.Errorf("scrape annotations = %v", a)
	}
	for _, pr := range []struct {
		name, path string
		p          *probe
	}{{"liveness", "/healthz", eg.LivenessProbe}, {"readiness", "/readyz", eg.ReadinessProbe}} {
		if pr.p == nil || pr.p.HTTPGet.Port != "metrics" || pr.p.HTTPGet.Path != pr.path {
			t.Errorf("%s probe = %+v; want GET %s on the metrics port", pr.name, pr.p, pr.path)
		}
	}
	if !eg.SecurityContext.ReadOnlyRootFilesystem || !eg.SecurityContext.RunAsNonRoot {
		t.Errorf("egressd's securityContext = %+v; want a read-only root and non-root", eg.SecurityContext)
	}

	// Every path the config names lies under one of egressd's mounts.
	mounted := func(path string) bool {
		for _, m := range eg.VolumeMounts {
			if path == m.MountPath || strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") {
				return true
			}
		}
		return false
	}
	configPath := eg.Args[slices.Index(eg.Args, "--config")+1]
	paths := append([]string{configPath, c.Admin.TokenFile, c.Secrets.File, c.Secrets.KeyFile, c.Scheduler.FunctionsFile, c.Scheduler.StateFile}, c.Allowlist...)
	for _, p := range paths {
		if p != "" && !mounted(p) {
			t.Errorf("%s is in the config but under no volumeMount of the egressd container", p)
		}
	}
	// Every volume refers to an object the manifests define.
	for _, v := range pod.Volumes {
		switch {
		case v.ConfigMap != nil && find(objs, "ConfigMap", v.ConfigMap.Name) == nil,
			v.Secret != nil && find(objs, "Secret", v.Secret.SecretName) == nil,
			v.PVC != nil && find(objs, "PersistentVolumeClaim", v.PVC.ClaimName) == nil:
			t.Errorf("volume %s refers to an object no manifest defines", v.Name)
		}
	}
	env := map[string]string{}
	for _, e := range fn.Env {
		env[e.Name] = e.Value
	}
	want := "http://" + c.Proxy.Listen
	if env["HTTP_PROXY"] != want || env["HTTPS_PROXY"] != want || env["NO_PROXY"] == "" || strings.Contains(env["NO_PROXY"], "egressd.internal") {
		t.Errorf("function env = %v; want HTTP(S)_PROXY %s, and a NO_PROXY without egressd.internal", env, want)
	}
	if find(objs, "ServiceMonitor", "") == nil {
		t.Error("no ServiceMonitor")
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	for _, want := range []string{"scripts/build.sh", "distroless/static", "USER nonroot", "/etc/egressd/egressd.yaml", "EXPOSE 3128 9090 9091", "ENTRYPOINT"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	c, err := config.LoadFS(FS, DefaultFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, listen := range []string{c.Proxy.Listen, c.Metrics.Listen, c.Admin.Listen} {
		_, p, _ := net.SplitHostPort(listen)
		if !strings.Contains(df, p) {
			t.Errorf("Dockerfile does not EXPOSE %s, a port of the default config", p)
		}
	}
	for _, src := range []string{"../scripts/build.sh", "egressd.yaml", "allowlist.d"} {
		if _, err := os.Stat(src); err != nil {
			t.Errorf("the Dockerfile copies or runs %s: %v", src, err)
		}
	}
}

// TestEtcdManifests: the example etcd for cluster mode has three members that name
// each other as the headless Service names them, with TLS for clients and peers,
// and the cluster-mode config loads and points at those members.
func TestEtcdManifests(t *testing.T) {
	data, err := os.ReadFile("kubernetes/etcd/etcd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var sts, cm map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		switch doc["kind"] {
		case "StatefulSet":
			sts = doc
		case "ConfigMap":
			cm = doc
		}
	}
	if sts == nil || cm == nil {
		t.Fatal("etcd.yaml needs the StatefulSet and the cluster-mode ConfigMap")
	}
	spec := sts["spec"].(map[string]any)
	if spec["replicas"] != 3 || spec["serviceName"] != "etcd" {
		t.Errorf("StatefulSet: replicas %v, serviceName %v; want 3 members behind the etcd Service", spec["replicas"], spec["serviceName"])
	}
	ctr := spec["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	args := fmt.Sprint(ctr["args"])
	var members []string
	for i := range 3 {
		members = append(members, fmt.Sprintf("etcd-%d=https://etcd-%d.etcd:2380", i, i))
	}
	for _, want := range []string{"--initial-cluster=" + strings.Join(members, ","), "--client-cert-auth", "--peer-client-cert-auth", "--listen-client-urls=https://"} {
		if !strings.Contains(args, want) {
			t.Errorf("etcd args lack %s", want)
		}
	}

	cfgFile := filepath.Join(t.TempDir(), "egressd.yaml")
	os.WriteFile(cfgFile, []byte(cm["data"].(map[string]any)["egressd.yaml"].(string)), 0o644)
	c, err := config.LoadFile(cfgFile)
	if err != nil {
		t.Fatalf("the cluster-mode egressd.yaml does not load: %v", err)
	}
	e := c.Cluster.Etcd
	if !c.SecretsShared() || len(e.Endpoints) != 3 || e.TLS.CAFile == "" || e.TLS.CertFile == "" || e.PasswordFile == "" {
		t.Errorf("cluster config: %+v; want secrets on etcd, three https endpoints, TLS with a client certificate, a password", e)
	}
	for i, ep := range e.Endpoints {
		if ep != fmt.Sprintf("https://etcd-%d.etcd:2379", i) {
			t.Errorf("endpoint %d is %s; want the StatefulSet's member etcd-%d", i, ep, i)
		}
	}
}
