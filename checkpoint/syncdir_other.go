//go:build !unix

package checkpoint

// SyncDir is a no-op where directories cannot be opened for fsync (Windows,
// plan9, wasm); the rename itself is still atomic there.
func SyncDir(dir string) error { return nil }
