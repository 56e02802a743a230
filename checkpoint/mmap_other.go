//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || solaris || illumos || aix || android || ios)

package checkpoint

import (
	"fmt"
	"os"
)

// mapFile reads the whole file into memory on platforms without mmap support
// in golang.org/x/sys/unix.
func mapFile(path string) (*mappedFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: read %s: %w", path, err)
	}
	if len(data) < headerPrefix {
		return nil, fmt.Errorf("checkpoint: %s: file is %d bytes, shorter than the 8-byte safetensors header length; the file is truncated or not a safetensors file", path, len(data))
	}
	return &mappedFile{path: path, data: data, release: func() error { return nil }}, nil
}
