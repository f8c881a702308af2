// Package configs holds egressd's example configuration, and embeds it so that the
// binary started with no flags runs on it from any directory.
package configs

import "embed"

// FS holds egressd.yaml and allowlist.d/ as shipped.
//
//go:embed egressd.yaml allowlist.d
var FS embed.FS

// DefaultFile is the name of the default config in FS.
const DefaultFile = "egressd.yaml"
