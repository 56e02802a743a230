package kernels

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Backends register themselves by name in their package's init (kernels/cpu
// as "cpu", kernels/cuda as "cuda"), so a binary has exactly the backends it
// links and no package above this one keeps a list of devices: a job's
// `device:` is checked with Registered and opened with New.
var (
	registryMu sync.Mutex
	registry   = map[string]func() (Backend, error){}
)

// Register makes open the constructor of the backend called name; a second
// registration of a name replaces the first (tests use that for fakes).
func Register(name string, open func() (Backend, error)) {
	registryMu.Lock()
	defer registryMu.Unlock()
	registry[name] = open
}

// Registered reports whether a backend called name is linked in.
func Registered(name string) bool {
	registryMu.Lock()
	defer registryMu.Unlock()
	_, ok := registry[name]
	return ok
}

// Names are the registered backends, sorted.
func Names() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	var names []string
	for n := range registry {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// New opens the backend called name. Errors name the device: one this
// binary lacks (with the ones it has), or the backend's own failure (no
// GPU, no driver).
func New(name string) (Backend, error) {
	registryMu.Lock()
	open, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("device %q is not built into this binary (it has: %s)", name, strings.Join(Names(), ", "))
	}
	b, err := open()
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", name, err)
	}
	return b, nil
}
