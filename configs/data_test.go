package configs

import (
	"errors"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"go.yaml.in/yaml/v3"
)

func parseData(t *testing.T, src string) (Data, error) {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatal(err)
	}
	m := root.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "data" {
			return DecodeData(m.Content[i+1], "data")
		}
	}
	t.Fatal("no data section")
	return Data{}, nil
}

func TestDecodeDataStrict(t *testing.T) {
	_, err := parseData(t, `
data:
  datasets:
    - path: a.jsonl
      colums: {text: body}
    - path: b.parquet
      columns: {txt: body}
  seq_len: 128
  shuffle_bufer: 10
`)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`data.datasets[0].colums (line 5): unknown key; did you mean "columns"?`,
		`data.datasets[1].columns.txt (line 7): unknown key; did you mean "text"?`,
		`data.shuffle_bufer (line 9): unknown key; did you mean "shuffle_buffer"?`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q lacks %q", err, want)
		}
	}
	_, err = parseData(t, "data:\n  seq_len: lots\n")
	if err == nil || !strings.Contains(err.Error(), "data.seq_len (line 2)") || !strings.Contains(err.Error(), "lots") {
		t.Fatalf("type error: %v", err)
	}
	_, err = parseData(t, "data:\n  seq_len: 128.5\n")
	if err == nil || !strings.Contains(err.Error(), "data.seq_len (line 2): 128.5 is not a whole number") {
		t.Fatalf("fraction for an integer key: %v", err)
	}
}

func TestDataOptions(t *testing.T) {
	d, err := parseData(t, `
data:
  datasets:
    - {path: chat.jsonl, type: messages, columns: {messages: conv}, weight: 2}
    - {path: /abs/pc.parquet, type: prompt_completion}
  seq_len: 256
  packing: false
  shuffle_buffer: 0
  seed: 7
  epochs: 3
  template: chatml
  train_on: all
  add_bos: false
  bad_rows: skip
  eval: {fraction: 0.05}
`)
	if err != nil {
		t.Fatal(err)
	}
	tr, ev, err := d.Options(DataEnv{BaseDir: "/jobs", BatchRows: 4})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Datasets[0].Path != "/jobs/chat.jsonl" || tr.Datasets[1].Path != "/abs/pc.parquet" || tr.Datasets[0].Columns.Messages != "conv" ||
		tr.Datasets[0].Weight != 2 || tr.SeqLen != 256 || tr.Packing || tr.ShuffleBuffer != 0 || tr.Seed != 7 || tr.Epochs != 3 ||
		tr.Template != "chatml" || tr.TrainOn != data.TrainOnAll || !tr.NoBOS || tr.NoEOS || tr.BadRows != data.BadRowsSkip ||
		tr.BatchRows != 4 || tr.PadID != -1 || tr.Split != data.SplitTrain || tr.EvalFraction != 0.05 {
		t.Fatalf("train options %+v", tr)
	}
	if ev == nil || ev.Split != data.SplitEval || ev.Epochs != 1 || ev.ShuffleBuffer != 0 {
		t.Fatalf("eval options %+v", ev)
	}
	// Defaults.
	d, _ = parseData(t, "data:\n  datasets: [{path: x.jsonl}]\n  seq_len: 64\n")
	tr, ev, err = d.Options(DataEnv{})
	if err != nil || !tr.Packing || tr.ShuffleBuffer != DefaultShuffleBuffer || tr.Seed != DefaultSeed || ev != nil {
		t.Fatalf("defaults: %+v %v %v", tr, ev, err)
	}
	// template: model needs the model's template.
	d.Template = "model"
	if _, _, err := d.Options(DataEnv{}); err == nil {
		t.Fatal("template model without chat_template")
	}
	tr, _, _ = d.Options(DataEnv{ChatTemplate: "{% for m in messages %}{{ m.content }}{% endfor %}"})
	if !strings.Contains(tr.Template, "for m in messages") {
		t.Fatal("model template not passed")
	}
}

func TestDataValidateAll(t *testing.T) {
	d, err := parseData(t, `
data:
  datasets: [{format: parket, type: chat}]
  truncation: cut
  train_on: asistant
  template: lama3
  eval: {fraction: 1.5}
`)
	if err != nil {
		t.Fatal(err)
	}
	errs := d.Validate("data")
	all := errors.Join(errs...).Error()
	for _, want := range []string{"data.seq_len", "data.datasets[0].path: missing", `data.datasets[0].format: "parket"`, `did you mean "parquet"`,
		`data.datasets[0].type: "chat"`, "data.truncation", `did you mean "assistant"`, `did you mean "llama3"`, "data.eval.fraction"} {
		if !strings.Contains(all, want) {
			t.Fatalf("errors %q lack %q", all, want)
		}
	}
}

// template: auto (the default) takes the model's chat_template, else the
// built-in template of the tokenizer's family.
func TestTemplateAuto(t *testing.T) {
	d, err := parseData(t, "data:\n  datasets: [{path: x.jsonl}]\n  seq_len: 16\n  template: auto\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ chat, kind, want string }{
		{"", "llama2", "llama2"},
		{"", "llama3", "llama3"},
		{"{{ messages }}", "llama2", "{{ messages }}"},
	} {
		o, _, err := d.Options(DataEnv{ChatTemplate: tc.chat, TokenizerKind: tc.kind})
		if err != nil {
			t.Fatal(err)
		}
		if o.Template != tc.want {
			t.Errorf("chat_template %q, tokenizer %s: template %q, want %q", tc.chat, tc.kind, o.Template, tc.want)
		}
	}
}
