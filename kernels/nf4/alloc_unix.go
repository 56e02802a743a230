//go:build unix

package nf4

import "syscall"

// allocBytes returns n zeroed bytes outside the Go heap (an anonymous
// mapping), so that a model's quantized weights — most of its memory — do
// not count in the collector's heap goal (GOGC lets the heap grow to about
// twice its live size before a collection: with gigabytes of weights on the
// heap that slack would be gigabytes too). free releases them; nil and
// on-heap fallbacks (when mapping fails) are left to the collector.
func allocBytes(n int) (b []byte, free func()) {
	if n == 0 {
		return []byte{}, func() {}
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, n), func() {}
	}
	return b, func() { syscall.Munmap(b) }
}
