//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly || solaris || illumos || aix || android || ios

package checkpoint

import (
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile memory-maps path read-only. The mapping outlives the descriptor,
// which is closed before returning.
func mapFile(path string) (*mappedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("checkpoint: stat %s: %w", path, err)
	}
	size := st.Size()
	if size < headerPrefix {
		return nil, fmt.Errorf("checkpoint: %s: file is %d bytes, shorter than the 8-byte safetensors header length; the file is truncated or not a safetensors file", path, size)
	}
	if size > math.MaxInt {
		return nil, fmt.Errorf("checkpoint: %s: file is %d bytes, too large to map on this platform; use a 64-bit build", path, size)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: mmap %s (%d bytes): %w", path, size, err)
	}
	return &mappedFile{
		path:    path,
		data:    data,
		release: func() error { return unix.Munmap(data) },
		// Advice only: a failure leaves the pages resident, nothing more.
		dontNeed: func(b []byte) { _ = unix.Madvise(b, unix.MADV_DONTNEED) },
	}, nil
}
