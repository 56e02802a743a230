//go:build !unix

package hub

import "os"

// tryLock is a no-op where flock is not available.
func tryLock(*os.File) (bool, error) { return true, nil }

// freeBytes is unknown here.
func freeBytes(string) int64 { return -1 }
