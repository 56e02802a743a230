package configs

import (
	"fmt"
)

// ServerTopK is distill.top_k's default for a server teacher: vLLM's
// default --max-logprobs, the most log-probs per position it returns unless
// started with a larger --max-logprobs.
const ServerTopK = 20

// Distill is the `distill:` section: where the teacher is and how the
// student learns from it.
//
//	distill:
//	  teacher: {model: /models/Llama-3.1-8B-Instruct}        # in-process
//	  # teacher: {url: http://localhost:8000/v1, name: meta-llama/Llama-3.1-405B-Instruct}
//	  # teacher: {shards: runs/teacher-logits}              # written by llamatune teacher-logits
//	  loss: forward_kl          # forward_kl | reverse_kl | jsd
//	  beta: 0.5                 # jsd: weight of the teacher in the mixture
//	  temperature: 2.0          # both distributions softened; the loss is scaled by T²
//	  kd_weight: 0.5            # loss = kd_weight·T²·KD + (1 − kd_weight)·CE
//	  top_k: 32                 # server/shards teachers give top-k (default: server 20, shards 32); in-process: 0 = full distribution
//	  sparse: tail              # tail: top-k + one bucket for the rest | renorm: top-k renormalized
//	  on_policy: 0.5            # GKD's λ: share of batches whose completions the student samples itself
//	                            # (with generate's temperature, top_p, max_new_tokens); model or url teachers;
//	                            # with cross_tokenizer: uld too
//	  cross_tokenizer: uld      # a teacher with another tokenizer: Universal Logit Distillation (in-process, or a server with teacher.tokenizer)
//
// With cross_tokenizer: uld the teacher re-tokenizes the student's text with
// its own tokenizer, and at every student position whose text prefix ends
// on a teacher token boundary the loss compares the two next-token
// distributions sorted by probability: the L1 distance of the top_k sorted
// probabilities plus that of the masses past them (top_k 0: 128),
// temperature applied to both, and
// loss = kd_weight·ULD + (1 − kd_weight)·CE (no T² factor). loss, beta and
// sparse do not apply. A server teacher needs teacher.tokenizer (its
// tokenizer) and temperature 1; shards cannot serve (they are over the
// student's ids).
type Distill struct {
	Teacher     Teacher `yaml:"teacher"`
	Loss        string  `yaml:"loss"`
	Beta        float64 `yaml:"beta"`
	Temperature float64 `yaml:"temperature"`
	KDWeight    float64 `yaml:"kd_weight"`
	TopK        int     `yaml:"top_k"`
	Sparse      string  `yaml:"sparse"`
	// OnPolicy is λ of on-policy distillation (GKD, TRL's lmbda): each
	// micro-batch, with probability λ, has its completions replaced by ones
	// the student samples itself (Generate's temperature, top_p and
	// max_new_tokens, capped by the document's room in its row), and the
	// teacher scores those. Those batches are trained on the divergence
	// alone (kd_weight counts as 1 on them: no cross-entropy on the
	// student's own samples). 0 (the default) is plain off-policy KD.
	OnPolicy float64 `yaml:"on_policy,omitempty"`
	// CrossTokenizer is "" (teacher and student share a tokenizer) or
	// "uld" (Universal Logit Distillation across tokenizers).
	CrossTokenizer string   `yaml:"cross_tokenizer,omitempty"`
	Generate       Generate `yaml:"generate"`
}

// Teacher says where the teacher is: exactly one of model, url, shards.
type Teacher struct {
	Model       string  `yaml:"model"`       // HF model directory, run in-process (frozen)
	URL         string  `yaml:"url"`         // OpenAI-compatible server (vLLM, SGLang, TGI), e.g. http://host:8000/v1
	Name        string  `yaml:"name"`        // the model name the server serves
	APIKeyEnv   string  `yaml:"api_key_env"` // environment variable holding the API key (default OPENAI_API_KEY)
	Shards      string  `yaml:"shards"`      // directory written by llamatune teacher-logits
	Concurrency int     `yaml:"concurrency"` // parallel requests (default 8)
	Timeout     float64 `yaml:"timeout"`     // seconds per request (default 300)
	Retries     int     `yaml:"retries"`     // per request, with exponential backoff (default 5)
	VocabHash   string  `yaml:"vocab_hash"`  // server teachers: the tokenizer hash the server uses (default: assume the student's)
	// Tokenizer: with cross_tokenizer: uld and a server teacher, a model
	// directory (or Hub id) holding the served model's tokenizer, which
	// re-tokenizes the student's text (an in-process teacher uses its own).
	Tokenizer string `yaml:"tokenizer"`
}

// Generate are the sampling settings of llamatune generate, and of the
// student's own completions when distill.on_policy > 0.
type Generate struct {
	MaxNewTokens int     `yaml:"max_new_tokens"` // default 512
	Temperature  float64 `yaml:"temperature"`    // default 0.7
	TopP         float64 `yaml:"top_p"`          // default 0.95
	Seed         uint64  `yaml:"seed"`           // default: the job's seed
}

func (d *Distill) fillDefaults(j *Job) {
	if d.Loss == "" {
		d.Loss = "forward_kl"
	}
	if j.unset("distill.beta", d.Beta == 0) {
		d.Beta = 0.5
	}
	if j.unset("distill.temperature", d.Temperature == 0) {
		d.Temperature = 1
	}
	if j.unset("distill.kd_weight", d.KDWeight == 0) {
		d.KDWeight = 0.5
	}
	// A server teacher's top_k defaults to vLLM's default --max-logprobs (20),
	// so that a server started without the flag answers; more needs
	// `vllm serve --max-logprobs K`. Shards (written ahead of time) keep 32;
	// an in-process teacher keeps 0 (the full distribution).
	if j.unset("distill.top_k", d.TopK == 0) && d.Teacher.Model == "" {
		d.TopK = 32
		if d.Teacher.URL != "" {
			d.TopK = ServerTopK
		}
	}
	if d.Sparse == "" {
		d.Sparse = "tail"
	}
	t := &d.Teacher
	if t.APIKeyEnv == "" {
		t.APIKeyEnv = "OPENAI_API_KEY"
	}
	if j.unset("distill.teacher.concurrency", t.Concurrency == 0) {
		t.Concurrency = 8
	}
	if j.unset("distill.teacher.timeout", t.Timeout == 0) {
		t.Timeout = 300
	}
	if j.unset("distill.teacher.retries", t.Retries == 0) {
		t.Retries = 5
	}
	g := &d.Generate
	if j.unset("distill.generate.max_new_tokens", g.MaxNewTokens == 0) {
		g.MaxNewTokens = 512
	}
	if j.unset("distill.generate.temperature", g.Temperature == 0) {
		g.Temperature = 0.7
	}
	if j.unset("distill.generate.top_p", g.TopP == 0) {
		g.TopP = 0.95
	}
	if j.unset("distill.generate.seed", g.Seed == 0) {
		g.Seed = j.Seed
	}
}

func (d *Distill) validate() []error {
	var errs []error
	addf := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	t := d.Teacher
	n := 0
	for _, s := range []string{t.Model, t.URL, t.Shards} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		addf("distill.teacher: set exactly one of model (in-process), url (OpenAI-compatible server) or shards (from llamatune teacher-logits); %d are set", n)
	}
	if t.URL != "" && t.Name == "" {
		addf("distill.teacher.name: missing; the model name the server at %s serves", t.URL)
	}
	if err := oneOfRequired("distill.loss", d.Loss, "forward_kl", "reverse_kl", "jsd"); err != nil {
		errs = append(errs, err)
	}
	if err := oneOfRequired("distill.sparse", d.Sparse, "tail", "renorm"); err != nil {
		errs = append(errs, err)
	}
	if d.Loss == "jsd" && (d.Beta <= 0 || d.Beta >= 1) {
		addf("distill.beta: must be in (0, 1) for jsd, got %g", d.Beta)
	}
	if err := oneOf("distill.cross_tokenizer", d.CrossTokenizer, "uld"); err != nil {
		errs = append(errs, fmt.Errorf("%w (or leave it empty when teacher and student share a tokenizer)", err))
	}
	if d.CrossTokenizer == "uld" && t.Shards != "" {
		addf("distill.cross_tokenizer: uld needs a teacher that scores its own tokenization of the student's text — in-process (distill.teacher.model) or a server (distill.teacher.url with distill.teacher.tokenizer); shards hold top-k over the student's token ids")
	}
	if d.CrossTokenizer == "uld" && t.URL != "" {
		if t.Tokenizer == "" {
			addf("distill.teacher.tokenizer: missing; with cross_tokenizer: uld a server teacher needs its tokenizer (a model directory or Hub id of the served model) to re-tokenize the student's text")
		}
		if d.Temperature != 1 {
			addf("distill.temperature: must be 1 with cross_tokenizer: uld and a server teacher (the server gives log-probabilities at temperature 1), got %g", d.Temperature)
		}
	}
	if t.Tokenizer != "" && (d.CrossTokenizer != "uld" || t.URL == "") {
		addf("distill.teacher.tokenizer: only used with cross_tokenizer: uld and a server teacher (url); an in-process teacher uses its model's tokenizer")
	}
	if d.Sparse == "renorm" && d.Loss != "forward_kl" {
		addf("distill.sparse: renorm works with loss forward_kl only (the student's mass outside the top-k has no teacher counterpart); use sparse: tail")
	}
	if d.Temperature <= 0 {
		addf("distill.temperature: must be > 0, got %g", d.Temperature)
	}
	if d.KDWeight < 0 || d.KDWeight > 1 {
		addf("distill.kd_weight: must be in [0, 1], got %g", d.KDWeight)
	}
	if d.TopK < 0 {
		addf("distill.top_k: must be ≥ 0, got %d", d.TopK)
	}
	if d.TopK == 0 && t.Model == "" {
		addf("distill.top_k: server and shard teachers give top-k log-probs; set top_k (e.g. 20 for a server: vLLM's default --max-logprobs)")
	}
	if t.Concurrency < 1 || t.Timeout <= 0 || t.Retries < 0 {
		addf("distill.teacher: concurrency must be ≥ 1, timeout > 0 and retries ≥ 0")
	}
	if d.OnPolicy < 0 || d.OnPolicy > 1 || d.OnPolicy != d.OnPolicy {
		addf("distill.on_policy: must be in [0, 1] (the share of batches the student completes itself), got %g", d.OnPolicy)
	}
	if d.OnPolicy > 0 && t.Shards != "" {
		addf("distill.on_policy: %g needs a teacher that can score new sequences; the shards teacher holds pre-computed logits of fixed ones: use distill.teacher.model (in-process) or url (a server), or set on_policy: 0", d.OnPolicy)
	}
	g := d.Generate
	if g.MaxNewTokens < 1 || g.Temperature < 0 || g.TopP <= 0 || g.TopP > 1 {
		addf("distill.generate: max_new_tokens must be ≥ 1, temperature ≥ 0 and top_p in (0, 1]")
	}
	return errs
}
