package export

import (
	"fmt"
	"github.com/llamatune/llamatune/checkpoint"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/model/llama"
)

// A checkpoint records its base model's fingerprint: --base pointing at
// another model of the same shape is refused, naming both directories and
// fingerprints, unless AllowOtherBase.
func TestExportRefusesOtherBase(t *testing.T) {
	f := loraFixture(t, "llama2")
	other := filepath.Join(t.TempDir(), "other-base")
	if _, err := randmodel.WriteTinyModel(other, randmodel.TinyOptions{Tokenizer: "llama2", Seed: 6}); err != nil {
		t.Fatal(err)
	}
	shape1, _ := llama.Fingerprint(f.base)
	shape2, _ := llama.Fingerprint(other)
	if shape1 != shape2 {
		t.Fatalf("the other base should have the same shape (fingerprints %s, %s)", shape1, shape2)
	}
	want, err := llama.WeightsFingerprint(f.base)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := llama.WeightsFingerprint(other)
	if got == want {
		t.Fatal("WeightsFingerprint does not tell two bases of the same shape apart")
	}
	ck := filepath.Join(t.TempDir(), "step-000010")
	copyDir(t, f.adapter, ck)
	writeFile(t, filepath.Join(ck, checkpoint.StateFile), fmt.Sprintf(`{"format":%q,"step":10,"method":"lora","base_model":%q,"model_hash":%q,"base_weights":%q}`,
		checkpoint.StateFormat, f.base, shape1, want))

	if src, err := ResolveSource(ck, ""); err != nil || src.BaseDir != f.base {
		t.Fatalf("recorded base: %+v %v", src, err)
	}
	if src, err := ResolveSource(ck, f.base); err != nil || src.BaseDir != f.base {
		t.Fatalf("--base the recorded base: %+v %v", src, err)
	}
	_, err = ResolveSource(ck, other)
	wantErr(t, err, f.base, other, want, got, "--allow-other-base")
	src, err := ResolveSourceWith(ck, other, ResolveOptions{AllowOtherBase: true})
	if err != nil || src.BaseDir != other {
		t.Fatalf("--allow-other-base: %+v %v", src, err)
	}
	// The recorded base itself changed on disk.
	changed := filepath.Join(t.TempDir(), "base")
	copyDir(t, other, changed)
	writeFile(t, filepath.Join(ck, checkpoint.StateFile), fmt.Sprintf(`{"format":%q,"step":10,"method":"lora","base_model":%q,"base_weights":%q}`,
		checkpoint.StateFormat, changed, want))
	_, err = ResolveSource(ck, "")
	if err == nil || !strings.Contains(err.Error(), "has changed since training") {
		t.Fatalf("changed base: %v", err)
	}
}
