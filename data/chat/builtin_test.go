package chat

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var conv = []Message{
	{Role: "system", Content: "Be brief."},
	{Role: "user", Content: "Hi"},
	{Role: "assistant", Content: "Hello!"},
	{Role: "user", Content: "2+2?"},
	{Role: "assistant", Content: " 4 "},
}

func trained(segs []Segment) []string {
	var out []string
	for _, s := range segs {
		if s.Train {
			out = append(out, s.Text)
		}
	}
	return out
}

func TestBuiltinLlama3(t *testing.T) {
	segs, err := Render("llama3", conv, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
		"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
		"<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>" +
		"<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>" +
		"<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
	if got := Join(segs); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := strings.Join(trained(segs), "|"); got != "Hello!<|eot_id|>|4<|eot_id|>" {
		t.Errorf("trained %q", got)
	}
	spans := Spans(segs)
	if len(spans) != 2 || want[spans[0][0]:spans[0][1]] != "Hello!<|eot_id|>" {
		t.Errorf("spans %v", spans)
	}
	// generation prompt: appended, not trained
	segs, err = Render("llama3", conv[:2], true)
	if err != nil {
		t.Fatal(err)
	}
	if j := Join(segs); !strings.HasSuffix(j, "Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") || len(trained(segs)) != 0 {
		t.Errorf("generation prompt: %q, trained %q", j, trained(segs))
	}
}

func TestTrainOnAll(t *testing.T) {
	for _, tpl := range []string{"llama3", "llama2", "chatml", jinjaLlama3} {
		segs, err := Render(tpl, conv, false, TrainOnAll())
		if err != nil {
			t.Fatal(err)
		}
		if len(segs) != 1 || !segs[0].Train {
			t.Errorf("%.10s: TrainOnAll gave %+v", tpl, segs)
		}
	}
}

const jinjaLlama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

func TestBuiltinLlama2(t *testing.T) {
	segs, err := Render("llama2", conv, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>"
	if got := Join(segs); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := strings.Join(trained(segs), "|"); got != " Hello! </s>| 4 </s>" {
		t.Errorf("trained %q", got)
	}
	if _, err := Render("llama2", []Message{{Role: "assistant", Content: "x"}}, false); err == nil || !strings.Contains(err.Error(), "alternate") {
		t.Errorf("non-alternating roles: err = %v", err)
	}
}

func TestBuiltinChatML(t *testing.T) {
	segs, err := Render("chatml", conv[1:3], true)
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n"
	if got := Join(segs); got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := strings.Join(trained(segs), "|"); got != "Hello!<|im_end|>" {
		t.Errorf("trained %q", got)
	}
}

func TestJinjaSpansMultiTurn(t *testing.T) {
	a, err := Render(jinjaLlama3, conv, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Render("llama3", conv, false)
	if err != nil {
		t.Fatal(err)
	}
	if Join(a) != Join(b) || strings.Join(trained(a), "|") != strings.Join(trained(b), "|") {
		t.Errorf("jinja %+v\nbuiltin %+v", a, b)
	}
}

func TestErrors(t *testing.T) {
	bad := []Message{{Role: "user", Content: "x"}, {Role: "robot", Content: "y"}}
	for _, tpl := range []string{"llama3", "llama2", "chatml", jinjaLlama3} {
		_, err := Render(tpl, bad, false)
		if err == nil || !strings.Contains(err.Error(), `unknown role "robot"`) {
			t.Errorf("%.10s: unknown role: err = %v", tpl, err)
		}
	}
	if _, err := Render("{% if false %}x{% endif %}", conv, false); err == nil || !strings.Contains(err.Error(), "rendered nothing") {
		t.Errorf("empty render: err = %v", err)
	}
	if _, err := Render("llama4", conv, false); err == nil || !strings.Contains(err.Error(), "unknown template") {
		t.Errorf("unknown template: err = %v", err)
	}
	if _, err := Render("llama3", nil, false); err == nil {
		t.Error("no messages: no error")
	}
	_, err := Render("{{ raise_exception('roles must alternate') }}", conv, false)
	if err == nil || !strings.Contains(err.Error(), "roles must alternate") {
		t.Errorf("raise_exception: err = %v", err)
	}
	_, err = Render("{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}", conv, false)
	if err == nil || !strings.Contains(err.Error(), `uses the filter "nosuchfilter"`) {
		t.Errorf("unsupported filter: err = %v", err)
	} else {
		t.Logf("unsupported filter error: %v", err)
	}
}

func TestGenerationBlocks(t *testing.T) {
	tpl := "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
	segs, err := Render(tpl, conv, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(trained(segs), "|"); got != "Hello!</s>| 4 </s>" {
		t.Errorf("trained %q", got)
	}
	_, err = Render("{% for m in messages %}{% frobnicate %}{% endfor %}", conv, false)
	if err == nil || !strings.Contains(err.Error(), `uses the tag "frobnicate"`) {
		t.Errorf("unknown tag: err = %v", err)
	}
}

func TestToJSON(t *testing.T) {
	segs, err := Render(`{{ tools | tojson }}|{{ tools | tojson(indent=2) }}{% for m in messages %}{% endfor %}`, conv[:1], false,
		WithTools([]byte(`[{"b": 1, "a": [1.5, "x\n<é>", true, null], "e": {}}]`)))
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"b": 1, "a": [1.5, "x\n<é>", true, null], "e": {}}]|[
  {
    "b": 1,
    "a": [
      1.5,
      "x\n<é>",
      true,
      null
    ],
    "e": {}
  }
]`
	if got := Join(segs); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestLoadTemplate(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadTemplate(dir); err == nil || !strings.Contains(err.Error(), "no chat template") {
		t.Errorf("empty dir: %v", err)
	}
	cfg := `{"bos_token": {"content": "<B>"}, "eos_token": "<E>", "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}]}`
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	tpl, opts, err := LoadTemplate(dir)
	if err != nil {
		t.Fatal(err)
	}
	segs, err := Render(tpl, conv[1:3], false, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if got := Join(segs); got != "<B>Hi<E>Hello!<E>" {
		t.Errorf("got %q", got)
	}
	if got := strings.Join(trained(segs), "|"); got != "Hello!<E>" {
		t.Errorf("trained %q", got)
	}
	os.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte("{% for m in messages %}[{{ m.content }}]{% endfor %}"), 0o644)
	tpl, _, err = LoadTemplate(dir)
	if err != nil || !strings.HasPrefix(tpl, "{% for m") {
		t.Errorf("chat_template.jinja not preferred: %q %v", tpl, err)
	}
}
