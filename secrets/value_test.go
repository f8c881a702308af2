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

// TestRedactionMethods calls each redacting method directly: Format alone would
// hide a String or GoString that gave the text away.
func TestRedactionMethods(t *testing.T) {
	v := NewValue("hunter2-very-secret")
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kj, _ := k.MarshalJSON()
	kt, _ := k.MarshalText()
	vj, _ := v.MarshalJSON()
	vt, _ := v.MarshalText()
	for name, got := range map[string]string{
		"Value.String": v.String(), "Value.GoString": v.GoString(), "Value.MarshalJSON": string(vj),
		"Value.MarshalText": string(vt), "Value.LogValue": v.LogValue().String(),
		"Key.String": k.String(), "Key.GoString": k.GoString(), "Key.MarshalJSON": string(kj),
		"Key.MarshalText": string(kt), "Key.LogValue": k.LogValue().String(),
	} {
		if strings.Trim(got, `"`) != redacted {
			t.Errorf("%s = %q; want %q", name, got, redacted)
		}
	}
}

// TestKeyNeverPrints: the master key's bytes appear through no verb.
func TestKeyNeverPrints(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	raw := k.b[:]
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%o", "%b"} {
		outs = append(outs, fmt.Sprintf(verb, k), fmt.Sprintf(verb, struct{ K Key }{k}), fmt.Sprintf(verb, &k))
	}
	j, _ := json.Marshal(map[string]any{"k": k})
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "k", k)
	outs = append(outs, string(j), buf.String())
	for _, o := range outs {
		for _, leak := range []string{fmt.Sprintf("%x", raw), fmt.Sprintf("%d", raw[:4]), fmt.Sprint(raw[0]) + " " + fmt.Sprint(raw[1])} {
			if strings.Contains(o, leak) {
				t.Errorf("the key leaked: %q", o)
			}
		}
	}
}
