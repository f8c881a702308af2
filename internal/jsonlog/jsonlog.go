// Package jsonlog is a slog.Handler that writes exactly the bytes log/slog's
// JSONHandler writes, at a fraction of the cost for the records egressd logs most:
// the access log's line per request, whose attributes are strings and numbers.
//
// slog's JSONHandler formats every float through encoding/json (reflection and
// an allocation per value) and walks each attribute through its general machinery
// (groups, ReplaceAttr, LogValuers). This handler encodes strings, integers,
// floats, booleans, durations and times itself, with encoding/json's and slog's
// own rules, and hands any record it does not fully cover to a JSONHandler of the
// same options, writing to the same writer under the same lock: groups,
// ReplaceAttr, AddSource, LogValuers and other Any values, attributes with empty
// keys, NaN and infinite floats, and times outside years 0-9999.
package jsonlog

import (
	"context"
	"io"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Handler is the JSON handler. Make one with NewHandler.
type Handler struct {
	w    *lockedWriter
	std  slog.Handler // slog's own JSONHandler: records this handler does not cover, and the level
	slow bool         // every record goes to std (options, groups or attributes not covered)
	pre  []byte       // WithAttrs's attributes, encoded, each with its leading comma
}

// NewHandler returns a handler writing JSON lines to w, as slog.NewJSONHandler(w,
// opts) would.
func NewHandler(w io.Writer, opts *slog.HandlerOptions) *Handler {
	if opts == nil {
		opts = &slog.HandlerOptions{}
	}
	lw := &lockedWriter{w: w}
	return &Handler{
		w:    lw,
		std:  slog.NewJSONHandler(lw, opts),
		slow: opts.ReplaceAttr != nil || opts.AddSource,
	}
}

// lockedWriter serializes the lines of this handler and of its JSONHandler.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// Enabled reports whether level is at least the handler's minimum, as slog's
// handler of the same options says.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.std.Enabled(ctx, level)
}

// WithAttrs returns a handler whose records carry as after the built-in keys.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.std = h.std.WithAttrs(as)
	if !h.slow {
		pre := append([]byte(nil), h.pre...)
		for _, a := range as {
			var ok bool
			if pre, ok = appendAttr(pre, a); !ok {
				h2.slow = true
				break
			}
		}
		h2.pre = pre
	}
	return &h2
}

// WithGroup returns a handler whose later attributes are in the group name: slog's
// own handler does the work from then on (an empty name included: slog's handler
// writes it as a group with an empty key).
func (h *Handler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.std = h.std.WithGroup(name)
	h2.slow = true
	return &h2
}

// bufPool holds line buffers; one that grew past maxPooled is not kept.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

const maxPooled = 16 << 10

// Handle writes r as one JSON line.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	if h.slow {
		return h.std.Handle(ctx, r)
	}
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooled {
			bufPool.Put(bp)
		}
	}()
	b, ok := h.appendRecord((*bp)[:0], r)
	*bp = b
	if !ok {
		return h.std.Handle(ctx, r)
	}
	_, err := h.w.Write(b)
	return err
}

// appendRecord appends r's line to b, or reports false if an attribute is not one
// this handler encodes.
func (h *Handler) appendRecord(b []byte, r slog.Record) ([]byte, bool) {
	b = append(b, '{')
	if !r.Time.IsZero() {
		var ok bool
		b = append(b, `"time":`...)
		if b, ok = appendTime(b, r.Time); !ok {
			return b, false
		}
		b = append(b, ',')
	}
	b = append(b, `"level":`...)
	b = appendString(b, r.Level.String())
	b = append(b, `,"msg":`...)
	b = appendString(b, r.Message)
	b = append(b, h.pre...)
	ok := true
	r.Attrs(func(a slog.Attr) bool {
		b, ok = appendAttr(b, a)
		return ok
	})
	if !ok {
		return b, false
	}
	return append(b, "}\n"...), true
}

// appendAttr appends ,"key":value to b, or reports false for an attribute that is
// not a plain key and value of a kind this handler encodes.
func appendAttr(b []byte, a slog.Attr) ([]byte, bool) {
	if a.Key == "" {
		return b, false // elided when empty, inlined when a group: slog's rules
	}
	b = append(b, ',')
	b = appendString(b, a.Key)
	b = append(b, ':')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return appendString(b, v.String()), true
	case slog.KindInt64:
		return strconv.AppendInt(b, v.Int64(), 10), true
	case slog.KindUint64:
		return strconv.AppendUint(b, v.Uint64(), 10), true
	case slog.KindFloat64:
		return appendFloat(b, v.Float64())
	case slog.KindBool:
		return strconv.AppendBool(b, v.Bool()), true
	case slog.KindDuration:
		return strconv.AppendInt(b, int64(v.Duration()), 10), true
	case slog.KindTime:
		return appendTime(b, v.Time())
	}
	return b, false
}

// appendTime appends t as slog's JSONHandler does: RFC 3339 with nanoseconds, in
// quotes; slog writes an error beside a year outside 0-9999, so those are not ours.
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	if y := t.Year(); y < 0 || y >= 10000 {
		return b, false
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

// appendFloat appends f as encoding/json does (slog's JSONHandler calls it): as
// ES6 converts a number to a string, exponents unpadded. NaN and infinities are
// errors there, so not ours.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, false
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}

// appendString appends s quoted and escaped as slog's JSONHandler does: control
// characters, quote and backslash escaped, invalid UTF-8 as \ufffd, U+2028 and
// U+2029 escaped; HTML characters as they are.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hex = "0123456789abcdef"
