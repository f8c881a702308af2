//go:build !linux

package residency

import "errors"

// TrimExecutable is Linux only.
func TrimExecutable() (int64, error) { return 0, errors.ErrUnsupported }

// Resident is Linux only.
func Resident(int) (int64, error) { return 0, errors.ErrUnsupported }
