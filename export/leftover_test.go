package export

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An export that fails midway (here: the disk "fills up" at the third
// tensor) leaves no destination and no temporary files; the same export
// without the fault then writes a complete destination and nothing else.
func TestFailedExportLeavesNothing(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	for _, format := range []string{"hf", "peft", "gguf", "gguf-lora"} {
		t.Run(format, func(t *testing.T) {
			parent := t.TempDir()
			out := filepath.Join(parent, "export", format)
			if strings.HasPrefix(format, "gguf") {
				out = filepath.Join(parent, "model.gguf")
			}
			run := func() error {
				switch format {
				case "hf":
					return HF(src, out, "F32", 20_000) // several shards
				case "peft":
					return PEFT(src, out)
				case "gguf-lora":
					return GGUFLoRA(src, out, "F32")
				}
				return GGUF(src, out, "F16")
			}
			n := 0
			failHook = func(tensor string) error {
				if n++; n == 3 {
					return errors.New("injected: no space left on device")
				}
				return nil
			}
			err := run()
			failHook = nil
			if err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("export with a failing write: %v", err)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("failed export left %s (%v)", out, err)
			}
			if left := walk(t, parent); len(left) > 0 {
				t.Fatalf("failed export left files: %v", left)
			}
			if err := run(); err != nil {
				t.Fatal(err)
			}
			for _, p := range walk(t, parent) {
				if strings.Contains(p, ".tmp") {
					t.Fatalf("temporary file left after a good export: %s", p)
				}
			}
		})
	}
}

// An --out that exists keeps the user's other files; an empty one is
// replaced.
func TestExportIntoExistingDir(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	out := t.TempDir()
	if err := os.WriteFile(filepath.Join(out, "NOTES.md"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := PEFT(src, out); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"NOTES.md", "adapter_config.json", "adapter_model.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Fatal(err)
		}
	}
	empty := t.TempDir()
	if err := PEFT(src, empty); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(empty, "adapter_config.json")); err != nil {
		t.Fatal(err)
	}
}

// walk lists the files (not directories) under dir.
func walk(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || strings.Contains(d.Name(), ".tmp") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
