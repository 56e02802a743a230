package checkpoint

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// PEFT adapter directory layout, as peft's save_pretrained writes it.
const (
	PEFTConfigFile  = "adapter_config.json"
	PEFTWeightsFile = "adapter_model.safetensors"
)

// AdapterConfig is a PEFT LoRA adapter_config.json. The typed fields are the
// ones a LoRA over a Llama model needs; Extra keeps every other key read from
// a file (peft adds keys release by release) so that a config read and
// written back keeps them.
//
// ToJSON writes the keys PEFT 0.10–0.11 writes for LoRA (alpha_pattern …
// use_rslora), sorted and indented by two spaces as PEFT's to_json_file does.
// That set loads in every PEFT release from 0.10 on (newer releases fill in
// their newer keys with defaults) and in vLLM, TGI and llama.cpp's
// convert_lora_to_gguf.py.
type AdapterConfig struct {
	PeftType            string // "LORA"
	TaskType            string // "CAUSAL_LM"
	BaseModelNameOrPath string
	Revision            string // "" is written as null
	R                   int
	LoraAlpha           float64
	LoraDropout         float64
	TargetModules       []string // PEFT module names: q_proj, k_proj, …
	UseRSLoRA           bool     // scaling alpha/sqrt(r) instead of alpha/r
	UseDoRA             bool     // DoRA: a lora_magnitude_vector [out] per module next to lora_A/lora_B
	Bias                string   // "none"
	FanInFanOut         bool
	InferenceMode       bool
	InitLoraWeights     bool
	ModulesToSave       []string // nil is written as null
	LayersToTransform   []int    // nil is written as null
	LayersPattern       string   // "" is written as null
	RankPattern         map[string]int
	AlphaPattern        map[string]float64
	// Extra holds keys of a file read by ParseAdapterConfig that have no field
	// above, verbatim. ToJSON writes them back (a typed field wins).
	Extra map[string]json.RawMessage
}

// NewAdapterConfig returns the config PEFT writes for a LoRA adapter of a
// causal LM trained with LoraConfig(r, lora_alpha, lora_dropout,
// target_modules, use_rslora) and saved for inference.
func NewAdapterConfig(baseModel string, r int, alpha, dropout float64, targets []string, rsLoRA bool) AdapterConfig {
	return AdapterConfig{
		PeftType: "LORA", TaskType: "CAUSAL_LM", BaseModelNameOrPath: baseModel,
		R: r, LoraAlpha: alpha, LoraDropout: dropout, TargetModules: append([]string(nil), targets...),
		UseRSLoRA: rsLoRA, Bias: "none", InferenceMode: true, InitLoraWeights: true,
	}
}

// Settings are c's LoRA settings.
func (c AdapterConfig) Settings() LoRASettings {
	return LoRASettings{R: c.R, Alpha: c.LoraAlpha, Dropout: c.LoraDropout, TargetModules: c.TargetModules, RSLoRA: c.UseRSLoRA}
}

// Scaling is lora_alpha/r, or lora_alpha/sqrt(r) with use_rslora, as PEFT computes it.
func (c AdapterConfig) Scaling() float64 { return c.Settings().Scaling() }

// Validate reports what in c this package cannot write or a LoRA merge cannot
// honour. Errors name the adapter_config.json key.
func (c AdapterConfig) Validate() error {
	var errs []string
	if c.PeftType != "LORA" {
		errs = append(errs, fmt.Sprintf("peft_type is %q; only LORA adapters are supported", c.PeftType))
	}
	for _, p := range c.Settings().Check() {
		key := map[string]string{"alpha": "lora_alpha", "dropout": "lora_dropout"}[p.Key]
		errs = append(errs, cmp.Or(key, p.Key)+": "+p.Msg)
	}
	if c.Bias != "" && c.Bias != "none" {
		errs = append(errs, fmt.Sprintf("bias is %q; only \"none\" is supported (Llama linear layers have no bias)", c.Bias))
	}
	if c.FanInFanOut {
		errs = append(errs, "fan_in_fan_out is true; that is for GPT-2 style Conv1D layers, Llama uses nn.Linear")
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// pyFloat formats f as Python's json module would for a float: integral
// values keep a ".0" (0.0, 1.0) so the file reads exactly like PEFT's.
func pyFloat(f float64) json.RawMessage {
	switch {
	case math.IsNaN(f):
		return json.RawMessage("NaN") // what json.dumps writes; Validate refuses it
	case math.IsInf(f, 1):
		return json.RawMessage("Infinity")
	case math.IsInf(f, -1):
		return json.RawMessage("-Infinity")
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return json.RawMessage(s)
}

// pyNumber formats lora_alpha: an integral value as an int (PEFT users
// nearly always pass an int), otherwise as a float.
func pyNumber(f float64) json.RawMessage {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return json.RawMessage(strconv.FormatInt(int64(f), 10))
	}
	return pyFloat(f)
}

func rawJSON(v any) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return json.RawMessage("null")
	}
	return json.RawMessage(bytes.TrimSpace(b.Bytes()))
}

func nullIfEmpty(s string) json.RawMessage {
	if s == "" {
		return json.RawMessage("null")
	}
	return rawJSON(s)
}

// fields returns every key ToJSON writes.
func (c AdapterConfig) fields() map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, 32)
	for k, v := range c.Extra {
		m[k] = v
	}
	rank := c.RankPattern
	if rank == nil {
		rank = map[string]int{}
	}
	alpha := map[string]json.RawMessage{}
	for k, v := range c.AlphaPattern {
		alpha[k] = pyNumber(v)
	}
	targets := c.TargetModules
	if targets == nil {
		targets = []string{}
	}
	m["alpha_pattern"] = rawJSON(alpha)
	m["auto_mapping"] = json.RawMessage("null")
	m["base_model_name_or_path"] = nullIfEmpty(c.BaseModelNameOrPath)
	bias := c.Bias
	if bias == "" {
		bias = "none"
	}
	m["bias"] = rawJSON(bias)
	m["fan_in_fan_out"] = rawJSON(c.FanInFanOut)
	m["inference_mode"] = rawJSON(c.InferenceMode)
	if _, keep := c.Extra["init_lora_weights"]; !keep || c.InitLoraWeights {
		m["init_lora_weights"] = rawJSON(c.InitLoraWeights)
	}
	if _, ok := m["layer_replication"]; !ok {
		m["layer_replication"] = json.RawMessage("null")
	}
	m["layers_pattern"] = nullIfEmpty(c.LayersPattern)
	if c.LayersToTransform == nil {
		m["layers_to_transform"] = json.RawMessage("null")
	} else {
		m["layers_to_transform"] = rawJSON(c.LayersToTransform)
	}
	if _, ok := m["loftq_config"]; !ok {
		m["loftq_config"] = json.RawMessage("{}")
	}
	m["lora_alpha"] = pyNumber(c.LoraAlpha)
	m["lora_dropout"] = pyFloat(c.LoraDropout)
	if _, ok := m["megatron_config"]; !ok {
		m["megatron_config"] = json.RawMessage("null")
	}
	if _, ok := m["megatron_core"]; !ok {
		m["megatron_core"] = rawJSON("megatron.core")
	}
	if c.ModulesToSave == nil {
		m["modules_to_save"] = json.RawMessage("null")
	} else {
		m["modules_to_save"] = rawJSON(c.ModulesToSave)
	}
	pt := c.PeftType
	if pt == "" {
		pt = "LORA"
	}
	m["peft_type"] = rawJSON(pt)
	m["r"] = rawJSON(c.R)
	m["rank_pattern"] = rawJSON(rank)
	m["revision"] = nullIfEmpty(c.Revision)
	m["target_modules"] = rawJSON(targets)
	m["task_type"] = nullIfEmpty(c.TaskType)
	m["use_dora"] = rawJSON(c.UseDoRA)
	m["use_rslora"] = rawJSON(c.UseRSLoRA)
	return m
}

// ToJSON renders c as PEFT writes adapter_config.json: keys sorted, two-space
// indent, a final newline.
func (c AdapterConfig) ToJSON() []byte {
	m := c.fields()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString("{\n")
	for i, k := range keys {
		b.WriteString("  ")
		b.Write(jsonString(k))
		b.WriteString(": ")
		writeIndented(&b, m[k])
		if i < len(keys)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("}\n")
	return b.Bytes()
}

// writeIndented writes a JSON value nested one level deep (two spaces), the
// way Python's json.dumps(indent=2) lays out lists and objects; empty ones
// stay {} and [].
func writeIndented(b *bytes.Buffer, v json.RawMessage) {
	if err := json.Indent(b, v, "  ", "  "); err != nil {
		b.Write(v)
	}
}

// ParseAdapterConfig decodes an adapter_config.json. file names the source in
// errors. Keys without a field land in Extra. target_modules may be a list or
// a single string (PEFT allows a regex there; it is kept as one entry).
func ParseAdapterConfig(data []byte, file string) (AdapterConfig, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return AdapterConfig{}, fmt.Errorf("%s: not valid JSON: %v (an adapter_config.json as PEFT writes it is expected)", file, err)
	}
	c := AdapterConfig{Bias: "none", InitLoraWeights: true, Extra: map[string]json.RawMessage{}}
	bad := func(key string, err error) error {
		return fmt.Errorf("%s: key %q: %v", file, key, err)
	}
	isNull := func(v json.RawMessage) bool { return len(v) == 0 || string(v) == "null" }
	for k, v := range raw {
		var err error
		switch k {
		case "peft_type":
			err = json.Unmarshal(v, &c.PeftType)
		case "task_type":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.TaskType)
			}
		case "base_model_name_or_path":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.BaseModelNameOrPath)
			}
		case "revision":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.Revision)
			}
		case "r":
			err = json.Unmarshal(v, &c.R)
		case "lora_alpha":
			err = json.Unmarshal(v, &c.LoraAlpha)
		case "lora_dropout":
			err = json.Unmarshal(v, &c.LoraDropout)
		case "target_modules":
			if isNull(v) {
				break
			}
			var one string
			if json.Unmarshal(v, &one) == nil {
				c.TargetModules = []string{one}
			} else {
				err = json.Unmarshal(v, &c.TargetModules)
			}
		case "use_rslora":
			err = json.Unmarshal(v, &c.UseRSLoRA)
		case "use_dora":
			err = json.Unmarshal(v, &c.UseDoRA)
		case "bias":
			err = json.Unmarshal(v, &c.Bias)
		case "fan_in_fan_out":
			err = json.Unmarshal(v, &c.FanInFanOut)
		case "inference_mode":
			err = json.Unmarshal(v, &c.InferenceMode)
		case "init_lora_weights":
			// true/false, or a scheme name ("gaussian", "pissa", ...): only
			// initialization, irrelevant once trained; keep the original.
			if json.Unmarshal(v, &c.InitLoraWeights) != nil {
				c.InitLoraWeights = false
				c.Extra[k] = v
			}
		case "modules_to_save":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.ModulesToSave)
			}
		case "layers_to_transform":
			if isNull(v) {
				break
			}
			var one int
			if json.Unmarshal(v, &one) == nil {
				c.LayersToTransform = []int{one}
			} else {
				err = json.Unmarshal(v, &c.LayersToTransform)
			}
		case "layers_pattern":
			if isNull(v) {
				break
			}
			if json.Unmarshal(v, &c.LayersPattern) != nil {
				c.Extra[k] = v // a list of patterns: keep as is
			}
		case "rank_pattern":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.RankPattern)
			}
		case "alpha_pattern":
			if !isNull(v) {
				err = json.Unmarshal(v, &c.AlphaPattern)
			}
		default:
			c.Extra[k] = v
		}
		if err != nil {
			return AdapterConfig{}, bad(k, err)
		}
	}
	if _, ok := raw["peft_type"]; !ok {
		return AdapterConfig{}, fmt.Errorf("%s: no \"peft_type\" key; this is not a PEFT adapter config", file)
	}
	return c, nil
}

// peftKeyRE matches the keys PEFT saves for LoRA weights (the adapter name is
// stripped on save; ".default" appears only in state dicts taken from a live
// model, and is accepted on read).
var peftKeyRE = regexp.MustCompile(`^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$`)

// peftMagnitudeRE matches the key PEFT saves for a DoRA magnitude vector
// (PEFT strips the ".weight" its live module has; both are accepted).
var peftMagnitudeRE = regexp.MustCompile(`^base_model\.model\.(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$`)

// ParsePEFTMagnitudeKey returns the module of a DoRA magnitude key such as
// base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.
func ParsePEFTMagnitudeKey(key string) (module string, ok bool) {
	m := peftMagnitudeRE.FindStringSubmatch(key)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// ParsePEFTKey splits a PEFT LoRA key such as
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight into the
// module (model.layers.0.self_attn.q_proj) and "A" or "B".
func ParsePEFTKey(key string) (module, ab string, ok bool) {
	m := peftKeyRE.FindStringSubmatch(key)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// PEFTPair is one adapted module of an adapter file.
type PEFTPair struct {
	Module     string // HF module name, e.g. model.layers.0.self_attn.q_proj
	AKey, BKey string
	MKey       string // DoRA magnitude vector [Out]; "" for plain LoRA
	Rank       int    // rows of A
	In, Out    int    // A is [Rank, In], B is [Out, Rank]
}

// PEFTPairs checks that shapes (key → shape) hold only LoRA A/B pairs of
// matching rank, each with at most one DoRA magnitude vector [out], and
// returns them sorted by module name. where prefixes errors (a file name).
func PEFTPairs(where string, shapes map[string][]int) ([]PEFTPair, error) {
	byModule := map[string]*PEFTPair{}
	keys := make([]string, 0, len(shapes))
	for k := range shapes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if mod, ok := ParsePEFTMagnitudeKey(k); ok {
			p := byModule[mod]
			if p == nil {
				p = &PEFTPair{Module: mod}
				byModule[mod] = p
			}
			if p.MKey != "" {
				return nil, fmt.Errorf("%s: module %s has two DoRA magnitude vectors (%q and %q)", where, mod, p.MKey, k)
			}
			if s := shapes[k]; len(s) != 1 {
				return nil, fmt.Errorf("%s: tensor %q has shape %v; a DoRA magnitude vector is 1-D ([out])", where, k, s)
			}
			p.MKey = k
			continue
		}
		mod, ab, ok := ParsePEFTKey(k)
		if !ok {
			return nil, fmt.Errorf("%s: tensor %q is not a LoRA weight; keys must look like base_model.model.<module>.lora_A.weight or .lora_B.weight (modules_to_save and bias tensors are not supported)", where, k)
		}
		s := shapes[k]
		if len(s) != 2 {
			return nil, fmt.Errorf("%s: tensor %q has shape %v; LoRA A and B are 2-D ([r, in] and [out, r])", where, k, s)
		}
		p := byModule[mod]
		if p == nil {
			p = &PEFTPair{Module: mod}
			byModule[mod] = p
		}
		if ab == "A" {
			if p.AKey != "" {
				return nil, fmt.Errorf("%s: module %s has two lora_A tensors (%q and %q)", where, mod, p.AKey, k)
			}
			p.AKey = k
		} else {
			if p.BKey != "" {
				return nil, fmt.Errorf("%s: module %s has two lora_B tensors (%q and %q)", where, mod, p.BKey, k)
			}
			p.BKey = k
		}
	}
	out := make([]PEFTPair, 0, len(byModule))
	for _, mod := range sortedKeys(byModule) {
		p := byModule[mod]
		if p.AKey == "" && p.BKey == "" {
			return nil, fmt.Errorf("%s: DoRA magnitude vector %q has no lora_A and lora_B tensors for module %s", where, p.MKey, mod)
		}
		if p.AKey == "" {
			return nil, fmt.Errorf("%s: %q has no matching lora_A tensor (expected %s)", where, p.BKey, strings.Replace(p.BKey, "lora_B", "lora_A", 1))
		}
		if p.BKey == "" {
			return nil, fmt.Errorf("%s: %q has no matching lora_B tensor (expected %s)", where, p.AKey, strings.Replace(p.AKey, "lora_A", "lora_B", 1))
		}
		a, b := shapes[p.AKey], shapes[p.BKey]
		if a[0] != b[1] {
			return nil, fmt.Errorf("%s: %q has shape %v ([r, in]) but %q has shape %v ([out, r]); their ranks %d and %d differ", where, p.AKey, a, p.BKey, b, a[0], b[1])
		}
		if a[0] == 0 {
			return nil, fmt.Errorf("%s: %q has rank 0", where, p.AKey)
		}
		p.Rank, p.In, p.Out = a[0], a[1], b[0]
		if p.MKey != "" && shapes[p.MKey][0] != p.Out {
			return nil, fmt.Errorf("%s: DoRA magnitude vector %q has shape %v but %q has %d output rows; they must match", where, p.MKey, shapes[p.MKey], p.BKey, p.Out)
		}
		out = append(out, *p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: holds no LoRA tensors", where)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkRanks verifies every pair has rank r unless rank_pattern gives
// per-module ranks, and that every pair has a DoRA magnitude vector exactly
// when use_dora is true.
func checkRanks(where string, cfg AdapterConfig, pairs []PEFTPair) error {
	for _, p := range pairs {
		if cfg.UseDoRA && p.MKey == "" {
			return fmt.Errorf("%s: adapter_config.json has use_dora true but module %s has no DoRA magnitude vector (expected %s)", where, p.Module, "base_model.model."+p.Module+".lora_magnitude_vector")
		}
		if !cfg.UseDoRA && p.MKey != "" {
			return fmt.Errorf("%s: tensor %q is a DoRA magnitude vector but adapter_config.json has use_dora false; set \"use_dora\": true there if this is a DoRA adapter", where, p.MKey)
		}
	}
	if len(cfg.RankPattern) > 0 {
		return nil
	}
	for _, p := range pairs {
		if p.Rank != cfg.R {
			return fmt.Errorf("%s: %q has rank %d but adapter_config.json says r=%d", where, p.AKey, p.Rank, cfg.R)
		}
	}
	return nil
}

// WritePEFT writes a LoRA adapter directory exactly as PEFT's save_pretrained
// does: dir/adapter_model.safetensors (metadata {"format": "pt"}) and
// dir/adapter_config.json, each atomically, the weights first. Every tensor
// must be a lora_A/lora_B key (see lora.PEFTKey) with matching ranks equal to
// cfg.R, plus with cfg.UseDoRA one lora_magnitude_vector [out] per module
// (lora.MagnitudeKey). dir is created if needed.
func WritePEFT(dir string, cfg AdapterConfig, tensors []WriteTensor) error {
	if cfg.PeftType == "" {
		cfg.PeftType = "LORA"
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("checkpoint: adapter config for %s: %w", dir, err)
	}
	shapes := make(map[string][]int, len(tensors))
	for _, t := range tensors {
		if _, dup := shapes[t.Name]; dup {
			return fmt.Errorf("checkpoint: %s: tensor %q is given twice", filepath.Join(dir, PEFTWeightsFile), t.Name)
		}
		shapes[t.Name] = t.Shape
	}
	where := filepath.Join(dir, PEFTWeightsFile)
	pairs, err := PEFTPairs("checkpoint: "+where, shapes)
	if err != nil {
		return err
	}
	if err := checkRanks("checkpoint: "+where, cfg, pairs); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("checkpoint: create adapter directory %s: %w", dir, err)
	}
	// Lay tensors out as Python's safetensors.save_file does (PEFT uses it):
	// larger dtypes first, then by name.
	tensors = append([]WriteTensor(nil), tensors...)
	sort.SliceStable(tensors, func(i, j int) bool {
		si, sj := dtypeSizes[tensors[i].DType], dtypeSizes[tensors[j].DType]
		if si != sj {
			return si > sj
		}
		return tensors[i].Name < tensors[j].Name
	})
	if err := WriteFile(where, tensors, map[string]string{FormatKey: FormatPyTorch}); err != nil {
		return err
	}
	js := cfg.ToJSON()
	return WriteAtomic(filepath.Join(dir, PEFTConfigFile), func(w io.Writer) error {
		_, err := w.Write(js)
		return err
	})
}

// ReadPEFT opens a PEFT LoRA adapter directory: it parses and validates
// adapter_config.json, opens adapter_model.safetensors, and checks that every
// tensor is a lora_A/lora_B weight (or, with use_dora, a magnitude vector),
// that each module has both (and its magnitude vector [out] with use_dora),
// and that their shapes agree ([r, in] and [out, r], r as in the config). The
// caller closes the Reader.
func ReadPEFT(dir string) (AdapterConfig, *Reader, error) {
	cfgPath := filepath.Join(dir, PEFTConfigFile)
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return AdapterConfig{}, nil, fmt.Errorf("checkpoint: %s not found; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors", cfgPath)
		}
		return AdapterConfig{}, nil, fmt.Errorf("checkpoint: read %s: %w", cfgPath, err)
	}
	cfg, err := ParseAdapterConfig(data, cfgPath)
	if err != nil {
		return AdapterConfig{}, nil, fmt.Errorf("checkpoint: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return AdapterConfig{}, nil, fmt.Errorf("checkpoint: %s: %w", cfgPath, err)
	}
	wPath := filepath.Join(dir, PEFTWeightsFile)
	if !fileExists(wPath) {
		if fileExists(filepath.Join(dir, "adapter_model.bin")) {
			return AdapterConfig{}, nil, fmt.Errorf("checkpoint: %s has adapter_model.bin (a pickle) but no %s; re-save the adapter with safe_serialization=True", dir, PEFTWeightsFile)
		}
		return AdapterConfig{}, nil, fmt.Errorf("checkpoint: %s not found; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors", wPath)
	}
	r, err := Open(wPath)
	if err != nil {
		return AdapterConfig{}, nil, err
	}
	shapes := make(map[string][]int, r.Len())
	for _, k := range r.Keys() {
		info, _ := r.Info(k)
		shapes[k] = info.Shape
	}
	pairs, err := PEFTPairs("checkpoint: "+wPath, shapes)
	if err == nil {
		err = checkRanks("checkpoint: "+wPath, cfg, pairs)
	}
	if err != nil {
		r.Close()
		return AdapterConfig{}, nil, err
	}
	return cfg, r, nil
}
