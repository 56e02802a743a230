package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/model/llama"
)

// teacherLogitsFlags override the job's distill.teacher section.
type teacherLogitsFlags struct {
	out, model, url, name string
	k                     int
	shardTokens           int64
	eval                  bool
}

func init() {
	var f teacherLogitsFlags
	cmd := &cobra.Command{
		Use:   "teacher-logits JOB.yaml --out DIR [--set k=v]...",
		Short: "Write a teacher's top-k log-probs for the job's data to Arrow shards",
		Long: `Run the job's data (tokenizer, template, masks, packing exactly as the job says, one
pass) through the teacher of its distill.teacher section — a model run in-process
(teacher.model) or an OpenAI-compatible server such as vLLM (teacher.url + teacher.name) — and
write, per packed row, input_ids, labels, position_ids, doc_start and the teacher's top-k ids and
log-probs (float16) as zstd-compressed Arrow IPC shards (part-NNNNN.arrow) with a manifest,
teacher_logits.json. Distill from them later with distill.teacher.shards: DIR.

A run that stops (Ctrl-C, a crash, a lost server) resumes where its last complete shard ended
when the same command is run again. --teacher-model / --teacher-url / --teacher-name / --k
override the job.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runTeacherLogits(ctx, args[0], *sets(cmd), f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	addSetFlag(cmd)
	cmd.Flags().StringVar(&f.out, "out", "", "output directory (required); an unfinished run there is resumed")
	cmd.Flags().StringVar(&f.model, "teacher-model", "", "teacher model directory, run in-process (overrides distill.teacher)")
	cmd.Flags().StringVar(&f.url, "teacher-url", "", "OpenAI-compatible server, e.g. http://localhost:8000/v1 (overrides distill.teacher)")
	cmd.Flags().StringVar(&f.name, "teacher-name", "", "model name the server serves (with --teacher-url)")
	cmd.Flags().IntVar(&f.k, "k", 0, "log-probs kept per position (default distill.top_k, else 32)")
	cmd.Flags().Int64Var(&f.shardTokens, "shard-tokens", 0, "tokens (rows × seq_len) per shard (default 4Mi)")
	cmd.Flags().BoolVar(&f.eval, "eval", false, "write the eval data instead of the training data")
	rootCmd.AddCommand(cmd)
}

func runTeacherLogits(ctx context.Context, jobPath string, setList []string, f teacherLogitsFlags, stdout, stderr io.Writer) error {
	job, err := loadJobWithOut("teacher-logits", jobPath, setList, f.out)
	if err != nil {
		return err
	}
	var tc configs.Teacher
	k := 32
	if job.Distill != nil {
		tc = job.Distill.Teacher
		if job.Distill.TopK > 0 {
			k = job.Distill.TopK
		}
	}
	if f.model != "" || f.url != "" {
		tc.Model, tc.URL, tc.Shards = f.model, f.url, ""
	}
	if f.name != "" {
		tc.Name = f.name
	}
	if f.k > 0 {
		k = f.k
	}
	if tc.Model == "" && tc.URL == "" {
		return fmt.Errorf("%s: no teacher; add distill: {teacher: {model: DIR}} or {teacher: {url: URL, name: NAME}} to the job, or pass --teacher-model / --teacher-url", jobPath)
	}

	// The student side: tokenizer (for the data and the vocabulary check) and vocab size.
	tok, err := tokenizer.Load(job.Model)
	if err != nil {
		return err
	}
	cfg, err := llama.LoadConfig(job.Model)
	if err != nil {
		return err
	}
	student := distill.Info{Name: job.Model, VocabSize: cfg.VocabSize, VocabHash: distill.TokenizerHash(tok)}

	if job.Distill != nil && job.Distill.CrossTokenizer != "" {
		return fmt.Errorf("%s: distill.cross_tokenizer: %s: teacher-logits shards hold the teacher's top-k over the student's token ids, which a teacher with another tokenizer cannot give; "+
			"run llamatune distill with the teacher in-process (distill.teacher.model) instead", jobPath, job.Distill.CrossTokenizer)
	}
	if job.Distill == nil { // flags only: the config defaults were not filled in
		tc.Timeout, tc.Retries = 300, 5
	}
	be, err := jobBackend(job)
	if err != nil {
		return err
	}
	if tc.Model != "" {
		fmt.Fprintf(stderr, "loading teacher %s\n", tc.Model)
	}
	teacher, err := distill.OpenTeacher(teacherOptions(job, tc, be, student, stderr))
	if err != nil {
		return err
	}
	defer teacher.Close()

	env := configs.DataEnv{Tokenizer: tok, VocabSize: cfg.VocabSize, BatchRows: job.Batch.MicroBatchSize}
	if env.ChatTemplate, err = modelChatTemplate(job.Model, job.Data.Template); err != nil {
		return err
	}
	trainOpts, evalOpts, err := job.Data.Options(env)
	if err != nil {
		return err
	}
	o := trainOpts
	if f.eval {
		if evalOpts == nil {
			return fmt.Errorf("%s: no eval data (set data.eval.fraction or data.eval.datasets)", jobPath)
		}
		o = *evalOpts
	}
	if o.Epochs != 1 {
		fmt.Fprintf(stderr, "note: data.epochs is %d; teacher logits are written for one pass (the shards are re-read each epoch)\n", o.Epochs)
	}
	onePass(&o, stderr)

	start := time.Now()
	var first *distill.ShardProgress
	report := newShardProgress(stderr)
	man, err := distill.WriteShards(ctx, distill.WriteShardsOptions{
		Dir: f.out, Teacher: teacher, K: k, ShardTokens: f.shardTokens,
		Open: func(from *data.Cursor) (distill.BatchSource, error) {
			if from != nil {
				fmt.Fprintf(stderr, "resuming %s after batch %d\n", f.out, from.Batches)
			}
			return data.New(o, from)
		},
		Progress: func(p distill.ShardProgress) {
			if first == nil {
				c := p
				first = &c
			}
			report(p, false)
		},
	})
	if err != nil {
		if ctx.Err() != nil && man != nil {
			return fmt.Errorf("interrupted: %d complete shard(s) are saved in %s; run the same command again to resume", len(man.Shards), f.out)
		}
		if man != nil && len(man.Shards) > 0 {
			return fmt.Errorf("%w\n(%d complete shard(s) are saved in %s; run the same command again to resume)", err, len(man.Shards), f.out)
		}
		return err
	}
	if first == nil {
		fmt.Fprintf(stdout, "%s is already complete: %d rows, %d tokens in %d shard(s), %.1f bytes/token\n", f.out, man.Rows, man.Tokens, len(man.Shards), man.BytesPerToken())
		return nil
	}
	report(distill.ShardProgress{Rows: man.Rows, Tokens: man.Tokens, Shards: len(man.Shards), Bytes: man.Bytes, ShardTokens: man.Tokens}, true)
	el := time.Since(start).Seconds()
	fmt.Fprintf(stdout, "wrote %s: %d rows of %d tokens, %d tokens in %d shard(s), top-%d of teacher %s; %.1f MB, %.1f bytes/token; %.0f tokens/s\n",
		f.out, man.Rows, man.SeqLen, man.Tokens, len(man.Shards), man.K, man.Teacher.Name, float64(man.Bytes)/1e6, man.BytesPerToken(), float64(man.Tokens-first.Tokens)/max(el, 1e-9))
	return nil
}

// newShardProgress is a progress bar of tokens on a terminal, a line every
// 10 s otherwise.
func newShardProgress(w io.Writer) func(p distill.ShardProgress, final bool) {
	if bar := countBar(w, "teacher logits", "tokens"); bar != nil {
		var last int64 = -1
		return func(p distill.ShardProgress, final bool) {
			if last < 0 {
				last = p.Tokens
			}
			bar.Add64(p.Tokens - last)
			last = p.Tokens
			if final {
				bar.Finish()
			}
		}
	}
	start, next := time.Now(), time.Now().Add(10*time.Second)
	var base int64 = -1
	return func(p distill.ShardProgress, final bool) {
		if base < 0 {
			base = p.Tokens
		}
		if now := time.Now(); now.After(next) || final {
			next = now.Add(10 * time.Second)
			bpt := 0.0
			if p.ShardTokens > 0 {
				bpt = float64(p.Bytes) / float64(p.ShardTokens)
			}
			fmt.Fprintf(w, "teacher-logits: %d rows, %d tokens, %d shard(s) (%.0f bytes/token so far), %.0f tokens/s\n",
				p.Rows, p.Tokens, p.Shards, bpt, float64(p.Tokens-base)/max(now.Sub(start).Seconds(), 1e-9))
		}
	}
}
