package export

import (
	"bytes"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/model/llama"
)

// GGUF → GGUF: exporting a GGUF base again (no adapter) gives back the same
// tensors byte for byte (Q and K un-permuted on read, permuted again on
// write) and the same metadata, general.name aside; for Q8_0 the second
// quantization of dequantized values is the identity. HF → GGUF → HF gives
// back the HF config.
func TestGGUFBaseReexport(t *testing.T) {
	for _, kind := range []string{"llama2", "llama3"} {
		hf := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: kind})
		for _, typ := range []string{"F32", "BF16", "Q8_0"} {
			dir := t.TempDir()
			first := filepath.Join(dir, "a.gguf")
			if err := GGUF(Source{BaseDir: hf}, first, typ); err != nil {
				t.Fatal(err)
			}
			second := filepath.Join(dir, "b.gguf")
			if err := GGUF(Source{BaseDir: first}, second, typ); err != nil {
				t.Fatal(err)
			}
			a, err := checkpoint.OpenGGUF(first)
			if err != nil {
				t.Fatal(err)
			}
			b, err := checkpoint.OpenGGUF(second)
			if err != nil {
				t.Fatal(err)
			}
			ka, kb := a.KVs(), b.KVs()
			if len(ka) != len(kb) {
				t.Fatalf("%s %s: %d metadata keys, then %d", kind, typ, len(ka), len(kb))
			}
			for i := range ka {
				if ka[i].Key == "general.name" {
					continue
				}
				if ka[i].Key != kb[i].Key || !reflect.DeepEqual(ka[i].Value, kb[i].Value) {
					t.Errorf("%s %s: metadata %s = %.80v, re-exported %s = %.80v", kind, typ, ka[i].Key, ka[i].Value, kb[i].Key, kb[i].Value)
				}
			}
			for _, ti := range a.Tensors() {
				ra, _ := a.Raw(ti.Name)
				rb, err := b.Raw(ti.Name)
				if err != nil || !bytes.Equal(ra, rb) {
					t.Errorf("%s %s: tensor %s differs after re-export (%v)", kind, typ, ti.Name, err)
				}
			}
			a.Close()
			b.Close()

			out := filepath.Join(dir, "hf")
			if err := HF(Source{BaseDir: first}, out, "F32", 0); err != nil {
				t.Fatal(err)
			}
			got, err := llama.LoadConfig(out)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := llama.LoadConfig(hf)
			got.TorchDtype, want.TorchDtype = "", ""
			got.EosTokenID, want.EosTokenID = nil, nil // GGUF keeps one eos id
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s %s: exported config %+v, want %+v", kind, typ, got, want)
			}
		}
	}
}
