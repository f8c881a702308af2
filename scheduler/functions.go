package scheduler

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"

	"gopkg.in/yaml.v3"
)

// Function states: only productive functions can be scheduled.
const (
	StateProductive = "productive"
	StateDraft      = "draft"
)

// Function is one entry of the functions file.
type Function struct {
	Name  string `yaml:"name" json:"name"`
	URL   string `yaml:"url" json:"url"`
	State string `yaml:"state" json:"state"`
}

// LoadFunctions reads the functions file, strictly: an unknown key, a missing name or
// URL, a duplicate name or an unknown state is an error naming the function. So is a
// file with no functions key at all, empty or blank: that is what a file being
// rewritten in place (": > f; cat new > f") or an empty ConfigMap key looks like,
// and taking it as "no functions" would undeploy every function and delete every
// schedule. A file that means no functions says "functions: []".
func LoadFunctions(path string) ([]Function, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("functions file: %w", err)
	}
	var doc struct {
		Functions *[]Function `yaml:"functions"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Functions == nil {
		return nil, fmt.Errorf("%s: no functions key (the file is empty or blank); the functions in force stay. "+
			"A file being written is taken as incomplete; to remove every function write \"functions: []\"", path)
	}
	seen := map[string]bool{}
	var errs []error
	for i, f := range *doc.Functions {
		where := fmt.Sprintf("%s: functions[%d] (%q)", path, i, f.Name)
		switch {
		case f.Name == "":
			errs = append(errs, fmt.Errorf("%s: no name", where))
		case seen[f.Name]:
			errs = append(errs, fmt.Errorf("%s: the name is used twice", where))
		}
		seen[f.Name] = true
		if u, err := url.Parse(f.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s: url %q is not an http:// URL, such as http://127.0.0.1:8080/", where, f.URL))
		}
		if f.State != StateProductive && f.State != StateDraft {
			errs = append(errs, fmt.Errorf("%s: state %q; write productive or draft", where, f.State))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return *doc.Functions, nil
}

// ReloadFunctions loads the functions file and installs it. A file that fails to load
// (corrupt, empty, unreadable) leaves the functions in force; the result is counted
// in the metrics.
func (s *Scheduler) ReloadFunctions(path string) error {
	fns, err := LoadFunctions(path)
	if err != nil {
		s.metrics.reloads.WithLabelValues("failure").Inc()
		s.metrics.lastReload.Set(0)
		return err
	}
	s.metrics.reloads.WithLabelValues("success").Inc()
	s.metrics.lastReload.Set(1)
	s.SetFunctions(fns)
	return nil
}
