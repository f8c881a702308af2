package jsonlog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
)

var when = time.Date(2026, 11, 30, 2, 22, 0, 531193812, time.UTC)

type valuer struct{}

func (valuer) LogValue() slog.Value { return slog.StringValue("resolved") }

// both returns what slog's JSONHandler and this handler write for the record made
// by build, each handler first shaped by with.
func both(t *testing.T, opts *slog.HandlerOptions, with func(slog.Handler) slog.Handler, r slog.Record) (want, got string) {
	t.Helper()
	var std, ours bytes.Buffer
	hs, ho := slog.Handler(slog.NewJSONHandler(&std, opts)), slog.Handler(NewHandler(&ours, opts))
	if with != nil {
		hs, ho = with(hs), with(ho)
	}
	if err := hs.Handle(context.Background(), r.Clone()); err != nil {
		t.Fatalf("slog's handler: %v", err)
	}
	if err := ho.Handle(context.Background(), r.Clone()); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	return std.String(), ours.String()
}

func record(at time.Time, level slog.Level, msg string, attrs ...slog.Attr) slog.Record {
	r := slog.NewRecord(at, level, msg, 0)
	r.AddAttrs(attrs...)
	return r
}

// TestAsJSONHandler: every way egressd or a library could log a record comes out
// byte for byte as slog's JSONHandler writes it.
func TestAsJSONHandler(t *testing.T) {
	accessLine := []slog.Attr{
		slog.String("client", "127.0.0.1:59588"), slog.String("method", "GET"),
		slog.String("target", "127.0.0.2:8081"), slog.String("decision", "allow"),
		slog.String("reason", "allowed"), slog.Int("status", 200),
		slog.Int64("bytes_up", 0), slog.Int64("bytes_down", 64),
		slog.Float64("duration_seconds", 0.001263954),
		slog.String("rule", "127.0.0.2:8081"), slog.String("rule_at", "allow.txt:1"),
	}
	cases := []struct {
		name string
		opts *slog.HandlerOptions
		with func(slog.Handler) slog.Handler
		r    slog.Record
	}{
		{name: "access line", r: record(when, slog.LevelInfo, "request", accessLine...)},
		{name: "no attributes", r: record(when, slog.LevelWarn, "reload failed")},
		{name: "zero time", r: record(time.Time{}, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "custom level", r: record(when, slog.LevelInfo+2, "m")},
		{name: "below debug", r: record(when, slog.LevelDebug-3, "m")},
		{name: "time zone", r: record(when.In(time.FixedZone("x", -5*3600-30*60)), slog.LevelError, "m")},
		{name: "every kind", r: record(when, slog.LevelInfo, "m",
			slog.String("s", "v"), slog.Int64("i", math.MinInt64), slog.Uint64("u", math.MaxUint64),
			slog.Bool("t", true), slog.Bool("f", false), slog.Duration("d", -1500*time.Millisecond),
			slog.Time("at", when.Add(time.Hour)), slog.Time("whole", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))},
		{name: "floats", r: record(when, slog.LevelInfo, "m",
			slog.Float64("zero", 0), slog.Float64("negzero", math.Copysign(0, -1)), slog.Float64("small", 1e-7),
			slog.Float64("edge", 1e-6), slog.Float64("big", 1e21), slog.Float64("under", 999999999999999999999.0),
			slog.Float64("neg", -123.456), slog.Float64("tiny", 5e-324), slog.Float64("max", math.MaxFloat64),
			slog.Float64("third", 1.0/3), slog.Float64("e-09", 1.5e-9))},
		{name: "NaN", r: record(when, slog.LevelInfo, "m", slog.String("before", "x"), slog.Float64("nan", math.NaN()))},
		{name: "infinity", r: record(when, slog.LevelInfo, "m", slog.Float64("inf", math.Inf(-1)))},
		{name: "escapes", r: record(when, slog.LevelInfo, "a \"quoted\"\\ \n\r\t\x00\x1f\x7f <html>&'",
			slog.String("ctl\x01key", "\b\f\x1b"), slog.String("utf8", "héllo 世界 \U0001F600"),
			slog.String("bad", "\xff\xfe ok \xc3"), slog.String("sep", "a\u2028b\u2029c"))},
		{name: "empty key", r: record(when, slog.LevelInfo, "m", slog.String("", "v"), slog.Int("a", 1))},
		{name: "empty attr", r: record(when, slog.LevelInfo, "m", slog.Attr{}, slog.Int("a", 1))},
		{name: "group attr", r: record(when, slog.LevelInfo, "m", slog.Group("g", slog.Int("a", 1), slog.String("b", "x")))},
		{name: "empty group", r: record(when, slog.LevelInfo, "m", slog.Group("g"), slog.Int("a", 1))},
		{name: "inline group", r: record(when, slog.LevelInfo, "m", slog.Group("", slog.Int("a", 1)))},
		{name: "any values", r: record(when, slog.LevelInfo, "m", slog.Any("err", errors.New("boom")),
			slog.Any("list", []int{1, 2}), slog.Any("nil", nil), slog.Any("v", valuer{}))},
		{name: "year 10000", r: record(when, slog.LevelInfo, "m", slog.Time("far", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)))},
		{name: "record year 10000", r: record(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), slog.LevelInfo, "m")},
		{name: "with attrs", with: func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.String("component", "proxy")}).WithAttrs([]slog.Attr{slog.Int("n", 2)})
		}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "with attrs, none in the record", with: func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.String("component", "proxy")})
		}, r: record(when, slog.LevelInfo, "m")},
		{name: "with an attr not covered", with: func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.Any("err", errors.New("x"))}).WithAttrs([]slog.Attr{slog.Int("n", 2)})
		}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "with empty group", with: func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.Group("g")})
		}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "with group", with: func(h slog.Handler) slog.Handler {
			return h.WithAttrs([]slog.Attr{slog.Int("top", 1)}).WithGroup("g").WithAttrs([]slog.Attr{slog.Int("in", 2)})
		}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "with empty group name", with: func(h slog.Handler) slog.Handler {
			return h.WithGroup("")
		}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "replace attr", opts: &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}, r: record(when, slog.LevelInfo, "m", slog.Int("a", 1))},
		{name: "add source", opts: &slog.HandlerOptions{AddSource: true}, r: record(when, slog.LevelInfo, "m")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, got := both(t, c.opts, c.with, c.r)
			if got != want {
				t.Errorf("wrote\n%s\nslog's JSONHandler writes\n%s", got, want)
			}
		})
	}
}

// TestEnabled: the same levels pass as through slog's handler.
func TestEnabled(t *testing.T) {
	ctx := context.Background()
	for _, opts := range []*slog.HandlerOptions{nil, {Level: slog.LevelWarn}, {Level: slog.LevelDebug}} {
		std, ours := slog.NewJSONHandler(nil, opts), NewHandler(nil, opts)
		for l := slog.LevelDebug - 4; l <= slog.LevelError+4; l++ {
			if ours.Enabled(ctx, l) != std.Enabled(ctx, l) {
				t.Errorf("options %+v, level %v: Enabled %v; slog says %v", opts, l, ours.Enabled(ctx, l), std.Enabled(ctx, l))
			}
		}
	}
}

// TestLinesWhole: lines this handler writes and lines it hands to slog's handler
// never interleave, from many goroutines (run with -race).
func TestLinesWhole(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(NewHandler(&out, nil))
	const goroutines, lines = 8, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				if i%2 == 0 {
					log.Info("fast", "g", g, "i", i, "pad", strings.Repeat("x", 100))
				} else {
					log.Info("slow", "g", g, "err", errors.New(strings.Repeat("y", 100)))
				}
			}
		}()
	}
	wg.Wait()
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != goroutines*lines {
		t.Fatalf("%d lines; want %d", len(got), goroutines*lines)
	}
	for _, l := range got {
		if !strings.HasPrefix(l, `{"time":`) || !strings.HasSuffix(l, "}") || strings.Count(l, `"msg"`) != 1 {
			t.Fatalf("a torn line: %q", l)
		}
	}
}

// FuzzAsJSONHandler: any strings, numbers and times come out as slog's
// JSONHandler writes them.
func FuzzAsJSONHandler(f *testing.F) {
	f.Add("request", "client", "127.0.0.1:1", int64(200), uint64(64), 0.001263954, true, int64(1500), int64(1764469320531193812))
	f.Add("a\"b\\\n", "\u2028", "\xff\xfe", int64(-1), uint64(0), 1e-7, false, int64(-1), int64(0))
	f.Add("", "k", "", int64(0), uint64(1<<63), 1e21, false, int64(0), int64(-62135596800000000))
	f.Fuzz(func(t *testing.T, msg, key, s string, i int64, u uint64, fl float64, b bool, d int64, unixNano int64) {
		if key == "" {
			key = "k"
		}
		r := record(time.Unix(0, unixNano).UTC(), slog.Level(i%16), msg,
			slog.String(key, s), slog.Int64(s, i), slog.Uint64("u", u), slog.Float64(msg+"f", fl),
			slog.Bool("b", b), slog.Duration("d", time.Duration(d)), slog.Time("t", time.Unix(0, d)))
		with := func(h slog.Handler) slog.Handler { return h.WithAttrs([]slog.Attr{slog.String(key, msg)}) }
		want, got := both(t, nil, with, r)
		if got != want {
			t.Errorf("wrote\n%s\nslog's JSONHandler writes\n%s", got, want)
		}
	})
}
