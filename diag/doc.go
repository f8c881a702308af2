// Package diag finds out why an allowlisted call fails and what to add.
//
// Trace follows a URL's redirect chain hop by hop, as a client would, and asks the
// policy about every hop's target: the most common reason an allowed call fails is
// a redirect to a host that is not on the list. Denials keeps the targets the proxy
// denied most recently, so operators see what functions try to reach. The package
// decides nothing itself; the policy and the guard do.
package diag
