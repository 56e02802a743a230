//go:build linux || darwin || freebsd

package cuda

import (
	"unsafe"

	"github.com/ebitengine/purego"
)

const dlSupported = true

func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
}

func dlsym(h uintptr, name string) (uintptr, error) { return purego.Dlsym(h, name) }

// ccall calls the C function at fn with integer/pointer arguments (every
// argument travels in a 64-bit slot, as the SysV and AAPCS64 ABIs pass
// int, unsigned, size_t and pointers). It returns the C return value.
// Go memory whose address is converted to uintptr in the call expression is
// kept alive and in place for the duration of the call.
//
//go:uintptrescapes
func ccall(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// goString reads a NUL-terminated C string.
func goString(p uintptr) string {
	if p == 0 {
		return ""
	}
	base := *(*unsafe.Pointer)(unsafe.Pointer(&p)) // C memory, not Go's
	var n int
	for *(*byte)(unsafe.Add(base, n)) != 0 {
		n++
	}
	return string(unsafe.Slice((*byte)(base), n))
}
