package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/chat"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/model/llama"
)

// generateFlags override the job's distill.teacher and distill.generate sections.
type generateFlags struct {
	out, model, url, name, format, system string
	maxNew, concurrency, dataset          int
	temperature, topP                     float64
	seed                                  uint64
	shardRows, maxReplyChars              int
	maxFailures, limit                    int64
	dedupOutputs, keepTruncated           bool
	changed                               func(string) bool
}

func init() {
	var f generateFlags
	cmd := &cobra.Command{
		Use:   "generate JOB.yaml --out DIR [--set k=v]...",
		Short: "Synthetic data from a teacher: answer the job's prompts and write a chat dataset",
		Long: `Sequence-level distillation data. Reads the prompts of the job's first dataset
(data.datasets[0], or --dataset N) row by row — a prompt column, or a messages column whose
final assistant turn is dropped — sends each to the teacher of the job's distill.teacher section
(a model run in-process, or an OpenAI-compatible server such as vLLM: teacher.url + teacher.name)
with the sampling settings of distill.generate (max_new_tokens, temperature, top_p, seed), and
writes the conversations with the teacher's reply to DIR as a messages dataset:
part-NNNNN.jsonl shards of {"messages": [...], "index": ROW} in prompt order (or Arrow IPC with
--format arrow) plus generate.manifest. Train on it with
data.datasets: [{path: DIR, type: messages}].

Repeated prompts (same text up to case and white space) are answered once. Replies that are
empty or cut off at max_new_tokens are dropped (--keep-truncated keeps the latter). Each
prompt's seed is derived from the seed and the prompt's row, so a run is reproducible, and a run
that stops (Ctrl-C, a crash, a lost server) resumes where it stopped when the same command is
run again: nothing is written twice or lost.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			f.changed = cmd.Flags().Changed
			return runGenerate(ctx, args[0], *sets(cmd), f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	addSetFlag(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.out, "out", "", "output directory (required); an unfinished run there is resumed")
	fl.StringVar(&f.model, "teacher-model", "", "teacher model directory, run in-process (overrides distill.teacher)")
	fl.StringVar(&f.url, "teacher-url", "", "OpenAI-compatible server, e.g. http://localhost:8000/v1 (overrides distill.teacher)")
	fl.StringVar(&f.name, "teacher-name", "", "model name the server serves (with --teacher-url)")
	fl.IntVar(&f.maxNew, "max-new-tokens", 0, "reply length limit (default distill.generate.max_new_tokens, else 512)")
	fl.Float64Var(&f.temperature, "temperature", 0, "sampling temperature, 0 = greedy (default distill.generate.temperature, else 0.7)")
	fl.Float64Var(&f.topP, "top-p", 0, "nucleus sampling (default distill.generate.top_p, else 0.95)")
	fl.Uint64Var(&f.seed, "seed", 0, "global seed; prompt i is sampled with a seed derived from it and i (default distill.generate.seed, else the job's seed)")
	fl.IntVar(&f.concurrency, "concurrency", 0, "prompts in flight (default distill.teacher.concurrency, else 8)")
	fl.IntVar(&f.dataset, "dataset", 0, "which entry of data.datasets holds the prompts")
	fl.StringVar(&f.system, "system", "", "system prompt added to prompts that have none")
	fl.StringVar(&f.format, "format", "jsonl", "output shards: jsonl or arrow")
	fl.IntVar(&f.shardRows, "shard-rows", 1000, "conversations per shard")
	fl.BoolVar(&f.dedupOutputs, "dedup-outputs", false, "also drop replies identical to an earlier reply")
	fl.BoolVar(&f.keepTruncated, "keep-truncated", false, "keep replies cut off at max_new_tokens")
	fl.IntVar(&f.maxReplyChars, "max-reply-chars", 0, "drop replies longer than this many bytes (0 = no limit)")
	fl.Int64Var(&f.maxFailures, "max-failures", 0, "prompts the teacher may fail on (after retries) before the run stops; 0 = stop at the first")
	fl.Int64Var(&f.limit, "limit", 0, "answer only the first N prompt rows (0 = all); a later run with a higher limit goes on")
	rootCmd.AddCommand(cmd)
}

func runGenerate(ctx context.Context, jobPath string, setList []string, f generateFlags, stdout, stderr io.Writer) error {
	job, err := loadJobWithOut("generate", jobPath, setList, f.out)
	if err != nil {
		return err
	}
	tc, sm, concurrency, err := generateSettings(job, jobPath, f)
	if err != nil {
		return err
	}

	// The prompts.
	if f.dataset < 0 || f.dataset >= len(job.Data.Datasets) {
		return fmt.Errorf("%s: --dataset %d: the job has %d dataset(s) under data.datasets", jobPath, f.dataset, len(job.Data.Datasets))
	}
	ds := job.Data.Datasets[f.dataset]
	spec := data.DatasetSpec{Name: ds.Name, Path: ds.Path, Format: data.Format(ds.Format), Type: data.Type(ds.Type), Split: ds.Split,
		Columns: data.Columns{Text: ds.Columns.Text, Messages: ds.Columns.Messages, Prompt: ds.Columns.Prompt, Completion: ds.Columns.Completion}}
	var src distill.PromptSource
	src, err = distill.DatasetPrompts(spec, f.system)
	if err != nil {
		return fmt.Errorf("%s: data.datasets[%d]: %w", jobPath, f.dataset, err)
	}
	defer src.Close()
	if f.limit > 0 {
		src = &limitPrompts{PromptSource: src, left: f.limit}
	}

	gen, err := openGenerator(job, tc, stderr)
	if err != nil {
		return err
	}

	badRows := data.BadRows(job.Data.BadRows)
	o := distill.GenerateOptions{
		Sampling: sm, Concurrency: concurrency, ShardRows: f.shardRows, Format: f.format,
		DedupOutputs: f.dedupOutputs, KeepTruncated: f.keepTruncated, MaxReplyChars: f.maxReplyChars,
		MaxFailures: f.maxFailures, BadRows: badRows, Source: spec.Path, Progress: stderr, Total: f.limit,
	}
	shown := 0
	o.OnDrop = func(i int64, err error) {
		if shown++; shown <= 5 {
			fmt.Fprintf(stderr, "skipped prompt row %d: %v\n", i, err)
		}
	}
	fmt.Fprintf(stderr, "generating with %s: max_new_tokens %d, temperature %g, top_p %g, seed %d, %d in flight → %s\n",
		gen.Name(), sm.MaxNewTokens, sm.Temperature, sm.TopP, sm.Seed, concurrency, f.out)
	st, err := distill.Generate(ctx, gen, src, f.out, o)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: %d prompt(s) done, %d conversation(s) saved in %s; run the same command again to resume", st.Prompts, st.Written, f.out)
		}
		return err
	}
	files, _ := distill.GenerateOutputs(f.out)
	resumed := ""
	if st.Resumed > 0 {
		resumed = fmt.Sprintf(" (%d done by earlier runs)", st.Resumed)
	}
	fmt.Fprintf(stdout, "wrote %s: %d conversation(s) in %d shard(s) from %d prompt(s)%s; %d duplicate prompt(s), %d identical reply(ies), %d empty, %d too long, %d invalid row(s), %d failed; %d reply tokens\n",
		f.out, st.Written, len(files), st.Prompts, resumed, st.Duplicates, st.DupOutputs, st.Empty, st.TooLong, st.Invalid, st.Failed, st.Tokens)
	fmt.Fprintf(stdout, "train on it with data.datasets: [{path: %s, type: messages}]\n", f.out)
	return nil
}

// generateSettings are the teacher, sampling and concurrency of a generate
// run: the job's distill section, then the flags.
func generateSettings(job *configs.Job, jobPath string, f generateFlags) (configs.Teacher, distill.Sampling, int, error) {
	changed := f.changed
	if changed == nil {
		changed = func(string) bool { return false }
	}
	tc := configs.Teacher{Concurrency: 8, Timeout: 300, Retries: 5}
	sm := distill.Sampling{MaxNewTokens: 512, Temperature: 0.7, TopP: 0.95, Seed: job.Seed}
	if d := job.Distill; d != nil {
		tc = d.Teacher
		g := d.Generate
		sm = distill.Sampling{MaxNewTokens: g.MaxNewTokens, Temperature: g.Temperature, TopP: g.TopP, Seed: g.Seed}
	}
	if f.model != "" || f.url != "" {
		tc.Model, tc.URL, tc.Shards = f.model, f.url, ""
	}
	if f.name != "" {
		tc.Name = f.name
	}
	if changed("max-new-tokens") {
		sm.MaxNewTokens = f.maxNew
	}
	if changed("temperature") {
		sm.Temperature = f.temperature
	}
	if changed("top-p") {
		sm.TopP = f.topP
	}
	if changed("seed") {
		sm.Seed = f.seed
	}
	concurrency := tc.Concurrency
	if changed("concurrency") {
		concurrency = f.concurrency
	}
	if concurrency < 1 {
		return tc, sm, 0, fmt.Errorf("generate: concurrency must be >= 1 (got %d)", concurrency)
	}
	if sm.MaxNewTokens < 1 {
		return tc, sm, 0, fmt.Errorf("generate: max_new_tokens must be >= 1 (got %d)", sm.MaxNewTokens)
	}
	if tc.Model == "" && tc.URL == "" {
		if tc.Shards != "" {
			return tc, sm, 0, fmt.Errorf("%s: distill.teacher.shards holds top-k log-probs, not a model that writes text; generate needs teacher.model or teacher.url (or --teacher-model / --teacher-url)", jobPath)
		}
		return tc, sm, 0, fmt.Errorf("%s: no teacher; add distill: {teacher: {model: DIR}} or {teacher: {url: URL, name: NAME}} to the job, or pass --teacher-model / --teacher-url", jobPath)
	}
	return tc, sm, concurrency, nil
}

// openGenerator is the teacher that writes the replies: a model loaded on
// the job's device, or an OpenAI-compatible chat server.
func openGenerator(job *configs.Job, tc configs.Teacher, stderr io.Writer) (distill.Generator, error) {
	if tc.Model != "" {
		be, err := jobBackend(job)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "loading teacher %s\n", tc.Model)
		m, err := llama.Load(tc.Model, be, frozenDType(job))
		if err != nil {
			return nil, err
		}
		m.Compute = computeDType(job)
		tok, err := tokenizer.Load(tc.Model)
		if err != nil {
			return nil, err
		}
		template, opts, how := generateTemplate(tc.Model, job.Data.Template, tok)
		fmt.Fprintf(stderr, "prompts rendered with %s\n", how)
		return distill.NewModelGenerator(m, tok, template, tc.Model, opts...)
	}
	retries := tc.Retries
	if retries == 0 {
		retries = -1 // an explicit retries: 0 means no retries
	}
	return distill.NewChatServer(distill.ChatServerOptions{BaseURL: tc.URL, Model: tc.Name, APIKeyEnv: tc.APIKeyEnv,
		Timeout: time.Duration(tc.Timeout * float64(time.Second)), MaxRetries: retries})
}

// generateTemplate picks the chat template an in-process teacher is prompted with: the
// teacher's own (chat_template.jinja / tokenizer_config.json), else the job's data.template
// when it names one, else the built-in template of the tokenizer's family.
func generateTemplate(teacherDir, jobTemplate string, tok tokenizer.Tokenizer) (string, []chat.Option, string) {
	if t, opts, err := chat.LoadTemplate(teacherDir); err == nil {
		return t, opts, "the teacher's chat template"
	}
	if jobTemplate == "llama3" && tok.Kind() == "llama2" {
		jobTemplate = "llama2" // the default template does not fit a Llama 2 vocabulary
	}
	if jobTemplate != "" && jobTemplate != "model" {
		name := jobTemplate
		if strings.Contains(name, "{") {
			name = "the job's Jinja template"
		}
		return jobTemplate, nil, name + " (data.template; the teacher has no chat template)"
	}
	if tok.Kind() == "llama2" {
		return "llama2", nil, "llama2 (the teacher has no chat template)"
	}
	return "llama3", nil, "llama3 (the teacher has no chat template)"
}

// limitPrompts stops a prompt source after a number of rows.
type limitPrompts struct {
	distill.PromptSource
	left int64
}

func (l *limitPrompts) Next() (distill.Prompt, error) {
	if l.left <= 0 {
		return distill.Prompt{}, io.EOF
	}
	l.left--
	return l.PromptSource.Next()
}
