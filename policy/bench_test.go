package policy

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
)

// syntheticAllowlist returns n rules: three quarters exact hosts, one quarter
// wildcards, a few with ports, as a large real allowlist would look.
func syntheticAllowlist(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		switch {
		case i%4 == 3:
			fmt.Fprintf(&b, "*.svc%d.example.com\n", i)
		case i%16 == 1:
			fmt.Fprintf(&b, "api%d.example.net:8443\n", i)
		default:
			fmt.Fprintf(&b, "host%d.example.org\n", i)
		}
	}
	return b.Bytes()
}

func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10, 10_000, 1_000_000} {
		b.Run("rules="+strconv.Itoa(n), func(b *testing.B) {
			rules, problems := ParseFile("bench.txt", bytes.NewReader(syntheticAllowlist(n)))
			if len(problems) > 0 {
				b.Fatal(problems)
			}
			m, _ := Compile(rules, Options{})
			// A mix of an exact hit, a deep wildcard hit and a miss.
			hosts := []string{
				"host" + strconv.Itoa(n/2) + ".example.org",
				"a.b.svc" + strconv.Itoa(n/4*4-1) + ".example.com",
				"unknown.example.io",
			}
			for i, want := range []bool{true, true, false} {
				if got := m.Decide(hosts[i], 443).Allow; got != want {
					b.Fatalf("Decide(%q).Allow = %v; want %v", hosts[i], got, want)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				_ = m.Decide(hosts[i%3], 443)
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	data := syntheticAllowlist(1_000_000)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rules, problems := ParseFile("bench.txt", bytes.NewReader(data))
		if len(problems) > 0 {
			b.Fatal(problems)
		}
		Compile(rules, Options{})
	}
}
