//go:build !unix

package nf4

// allocBytes returns n zeroed bytes on the Go heap (see alloc_unix.go).
func allocBytes(n int) (b []byte, free func()) { return make([]byte, n), func() {} }
