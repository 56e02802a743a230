package export

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/llamatune/llamatune/checkpoint"
)

// failHook, when set (tests only), is called before each tensor is written;
// an error it returns fails the export there, as a full disk would.
var failHook func(tensor string) error

func checkFailHook(tensor string) error {
	if failHook != nil {
		return failHook(tensor)
	}
	return nil
}

// writeDirAtomic builds an export directory in a temporary directory next to
// outDir (.NAME.tmp-*) and moves it into place only once fill has written
// everything, so a failed or interrupted export leaves no outDir (or the
// one that was there, untouched) and no temporary directory. An outDir that
// exists and is empty is replaced; one that holds files gets the new files
// moved in, each replacing its namesake.
func writeDirAtomic(outDir string, fill func(tmp string) error) (err error) {
	outDir = filepath.Clean(outDir)
	parent := filepath.Dir(outDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("export: create %s: %w", parent, err)
	}
	if st, err := os.Stat(outDir); err == nil && !st.IsDir() {
		return fmt.Errorf("export: output %s exists and is not a directory; choose another --out", outDir)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(outDir)+".tmp-")
	if err != nil {
		return fmt.Errorf("export: create a temporary directory next to %s: %w (is %s writable?)", outDir, err, parent)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("export: chmod %s: %w", tmp, err)
	}
	if err := fill(tmp); err != nil {
		return err
	}
	if ents, rerr := os.ReadDir(outDir); rerr == nil && len(ents) > 0 {
		// Keep what else the user has there; move the new files in.
		files, err := os.ReadDir(tmp)
		if err != nil {
			return fmt.Errorf("export: list %s: %w", tmp, err)
		}
		for _, f := range files {
			if err := os.Rename(filepath.Join(tmp, f.Name()), filepath.Join(outDir, f.Name())); err != nil {
				return fmt.Errorf("export: move %s into %s: %w", f.Name(), outDir, err)
			}
		}
		checkpoint.SyncDir(outDir)
		return os.RemoveAll(tmp)
	} else if rerr == nil {
		if err := os.Remove(outDir); err != nil {
			return fmt.Errorf("export: replace the empty directory %s: %w", outDir, err)
		}
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return fmt.Errorf("export: move %s to %s: %w", tmp, outDir, err)
	}
	checkpoint.SyncDir(parent)
	return nil
}
