package export

import (
	"fmt"
	"github.com/llamatune/llamatune/checkpoint"
	"os"
	"path/filepath"
	"testing"
)

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolveSourceLayouts(t *testing.T) {
	f := loraFixture(t, "llama2")
	run := t.TempDir()
	state := func(step int, method, base string) string {
		return `{"format":"llamatune-checkpoint/1","step":` + itoa(step) + `,"method":"` + method + `","base_model":"` + base + `"}`
	}
	// A run with two LoRA checkpoints; the highest step wins.
	for _, s := range []int{100, 2000} {
		d := filepath.Join(run, "checkpoints", "step-"+pad6(s))
		copyDir(t, f.adapter, d)
		writeFile(t, filepath.Join(d, checkpoint.StateFile), state(s, "lora", f.base))
	}
	// An unfinished step (no state.json, no adapter) is skipped.
	if err := os.MkdirAll(filepath.Join(run, "checkpoints", "step-009999"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := ResolveSource(run, "")
	if err != nil {
		t.Fatal(err)
	}
	if src.AdapterDir != filepath.Join(run, "checkpoints", "step-002000") || src.BaseDir != f.base || src.WeightsDir != "" {
		t.Errorf("run dir resolved to %+v", src)
	}
	// The resolved source exports.
	if err := PEFT(src, filepath.Join(t.TempDir(), "p")); err != nil {
		t.Fatal(err)
	}

	// Steps are ordered by number, not name: step-1000000 is newer than step-002000.
	big := filepath.Join(run, "checkpoints", "step-1000000")
	copyDir(t, f.adapter, big)
	writeFile(t, filepath.Join(big, checkpoint.StateFile), state(1000000, "lora", f.base))
	if src, err := ResolveSource(run, ""); err != nil || src.AdapterDir != big {
		t.Errorf("with step-1000000: %+v, %v", src, err)
	}

	// A bare PEFT adapter: base from its config, or --base.
	if src, err := ResolveSource(f.adapter, ""); err != nil || src.BaseDir != f.base || src.AdapterDir != f.adapter {
		t.Errorf("adapter dir: %+v, %v", src, err)
	}
	other := t.TempDir()
	if src, err := ResolveSource(f.adapter, other); err != nil || src.BaseDir != other {
		t.Errorf("adapter dir with --base: %+v, %v", src, err)
	}

	// A full fine-tune checkpoint.
	full := filepath.Join(t.TempDir(), "step-000010")
	copyDir(t, f.base, full)
	writeFile(t, filepath.Join(full, checkpoint.StateFile), state(10, "full", "/nonexistent/base"))
	if src, err := ResolveSource(full, ""); err != nil || src.WeightsDir != full || src.BaseDir != full {
		t.Errorf("full checkpoint: %+v, %v", src, err)
	}

	// Errors name the file and what to do.
	lost := filepath.Join(t.TempDir(), "ck")
	copyDir(t, f.adapter, lost)
	writeFile(t, filepath.Join(lost, checkpoint.StateFile), state(1, "lora", "/nonexistent/base"))
	_, err = ResolveSource(lost, "")
	wantErr(t, err, "state.json", "/nonexistent/base", "--base")
	if src, err := ResolveSource(lost, f.base); err != nil || src.BaseDir != f.base {
		t.Errorf("--base override: %+v, %v", src, err)
	}
	newer := filepath.Join(t.TempDir(), "ck")
	writeFile(t, filepath.Join(newer, checkpoint.StateFile), `{"format":"llamatune-checkpoint/2","method":"lora"}`)
	_, err = ResolveSource(newer, "")
	wantErr(t, err, "llamatune-checkpoint/2", "upgrade")
	_, err = ResolveSource(t.TempDir(), "")
	wantErr(t, err, "not something to export")
	_, err = ResolveSource(filepath.Join(t.TempDir(), "missing"), "")
	wantErr(t, err, "does not exist")
	noBase := filepath.Join(t.TempDir(), "adapter")
	copyDir(t, f.adapter, noBase)
	writeFile(t, filepath.Join(noBase, "adapter_config.json"), `{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"base_model_name_or_path":"meta-llama/Llama-2-7b-hf"}`)
	_, err = ResolveSource(noBase, "")
	wantErr(t, err, "meta-llama/Llama-2-7b-hf", "--base")
}

func itoa(n int) string { return fmt.Sprint(n) }
func pad6(n int) string { return fmt.Sprintf("%06d", n) }
