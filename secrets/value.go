package secrets

import (
	"fmt"
	"log/slog"
)

// Value is a secret's value. It prints as "<secret>" through every fmt verb, JSON,
// text marshalling and slog, so that a log line, an error or a debug dump cannot leak
// it; Reveal is the one way to the text, used where egressd means to hand it over.
type Value struct{ s string }

// NewValue wraps s.
func NewValue(s string) Value { return Value{s} }

// Reveal returns the secret text.
func (v Value) Reveal() string { return v.s }

// Len is the value's length in bytes.
func (v Value) Len() int { return len(v.s) }

const redacted = "<secret>"

func (Value) String() string               { return redacted }
func (Value) GoString() string             { return redacted }
func (Value) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Value) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (Value) LogValue() slog.Value         { return slog.StringValue(redacted) }

// Format makes every verb print "<secret>": without it, %d or %x on the struct
// would print the field.
func (Value) Format(f fmt.State, _ rune) { f.Write([]byte(redacted)) }
