package secrets

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestValueNeverPrints(t *testing.T) {
	v := NewValue("hunter2-very-secret")
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		outs = append(outs, fmt.Sprintf(verb, v), fmt.Sprintf(verb, struct{ V Value }{v}), fmt.Sprintf(verb, &v))
	}
	j, _ := json.Marshal(map[string]any{"v": v})
	outs = append(outs, string(j), fmt.Sprint(v), fmt.Sprintln(v))
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v, "nested", struct{ V Value }{v})
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v)
	outs = append(outs, buf.String())
	for _, o := range outs {
		if strings.Contains(o, "hunter2") || strings.Contains(o, fmt.Sprintf("%x", "hunter2")) {
			t.Errorf("the value leaked: %q", o)
		}
	}
	if v.Reveal() != "hunter2-very-secret" {
		t.Errorf("Reveal() = %q", v.Reveal())
	}
}
