//go:build !(linux || darwin || freebsd)

package cuda

import "errors"

const dlSupported = false

var errNoDL = errors.New("cuda: dynamic loading of the CUDA libraries is not supported on this OS")

func dlopen(string) (uintptr, error)         { return 0, errNoDL }
func dlsym(uintptr, string) (uintptr, error) { return 0, errNoDL }
func ccall(uintptr, ...uintptr) uintptr      { panic(errNoDL) }
func goString(uintptr) string                { return "" }
