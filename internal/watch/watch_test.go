package watch

import "testing"

func TestRelevantEvents(t *testing.T) {
	tg := newTargets([]string{"/etc/egressd/allow.d", "/etc/egressd/extra.txt"})
	tests := []struct {
		name string
		want bool
	}{
		{"/etc/egressd/allow.d/a.txt", true},      // a file in a configured directory
		{"/etc/egressd/allow.d/..data", true},     // a ConfigMap swap inside it
		{"/etc/egressd/allow.d/.a.txt.swp", true}, // an editor's temporary file, then renamed
		{"/etc/egressd/extra.txt", true},          // a configured file
		{"/etc/egressd/allow.d", true},            // the directory itself, recreated
		{"/etc/egressd/..data", true},             // a ConfigMap mounted one level up
		{"/etc/egressd/egressd.yaml", false},      // a neighbour of a configured file
		{"/etc/egressd/other.txt", false},         // likewise
		{"/etc/passwd", false},                    // elsewhere
	}
	for _, tt := range tests {
		if got := tg.relevant(tt.name); got != tt.want {
			t.Errorf("relevant(%s) = %v; want %v", tt.name, got, tt.want)
		}
	}
}
