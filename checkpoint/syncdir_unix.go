//go:build unix

package checkpoint

import (
	"errors"
	"os"
	"syscall"
)

// SyncDir fsyncs a directory so a rename inside it is durable. File systems
// that cannot fsync a directory (EINVAL, ENOTSUP) are not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return nil
}
