package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/train"
)

func init() {
	var resume string
	cmd := &cobra.Command{
		Use:   "distill JOB.yaml [--set k=v]... [--resume [DIR]]",
		Short: "Train a student from a teacher (in-process, OpenAI-compatible server, or offline top-k shards)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			job, err := configs.Load(args[0], *sets(cmd))
			if err != nil {
				return err
			}
			if job.Distill == nil {
				return fmt.Errorf("%s: no distill: section; add distill: {teacher: {model: DIR}} (or url:, shards:)", args[0])
			}
			ctx, stop := interruptible(os.Stderr, filepath.Join(job.OutputDir, "checkpoints"))
			defer stop()
			_, err = runTrainWith(ctx, job, resume, os.Stdout, runHooks{setup: distillSetup})
			return err
		},
	}
	addSetFlag(cmd)
	cmd.Flags().StringVar(&resume, "resume", "", "resume from a checkpoint dir, or the run's latest when given without a value")
	cmd.Flags().Lookup("resume").NoOptDefVal = "latest"
	rootCmd.AddCommand(cmd)
}

// openTeacher opens the job's teacher on the student's device and checks it
// shares the student's vocabulary.
func openTeacher(job *configs.Job, s *session, log io.Writer) (distill.Teacher, error) {
	studentHash, err := distill.VocabHash(job.Model)
	if err != nil {
		return nil, err
	}
	student := distill.Info{Name: job.Model, VocabSize: s.model.Config.VocabSize, VocabHash: studentHash}
	return distill.OpenTeacher(teacherOptions(job, job.Distill.Teacher, s.model.Backend(), student, log))
}

// teacherOptions are distill.OpenOptions for the teacher tc of job: an
// in-process one on be with the job's precision, or its server settings.
func teacherOptions(job *configs.Job, tc configs.Teacher, be kernels.Backend, student distill.Info, log io.Writer) distill.OpenOptions {
	return distill.OpenOptions{Model: tc.Model, Backend: be, Weights: frozenDType(job), Compute: computeDType(job),
		Server: distill.ServerOptions{BaseURL: tc.URL, Model: tc.Name, APIKeyEnv: tc.APIKeyEnv, Concurrency: tc.Concurrency,
			Timeout: time.Duration(tc.Timeout * float64(time.Second)), MaxRetries: tc.Retries,
			Info: distill.Info{Name: tc.Name, VocabHash: tc.VocabHash}},
		Student: student, Log: log}
}

// distillSetup swaps the loss for the KD loss against the job's teacher.
func distillSetup(ctx context.Context, s *session, o *train.Options) (func(), error) {
	d := s.job.Distill
	kind, err := distill.ParseKind(d.Loss)
	if err != nil {
		return nil, err
	}
	if d.CrossTokenizer == "uld" {
		return uldSetup(ctx, s, o)
	}
	var t distill.Teacher
	if dir := d.Teacher.Shards; dir != "" {
		// The shards are both the data (packed rows as teacher-logits wrote
		// them) and the teacher of the batches they hand out.
		st := &shardTeacher{}
		o.OpenData = func(from *data.Cursor) (train.Batches, error) {
			r, err := distill.OpenShards(dir, distill.ShardReaderOptions{BatchRows: s.job.Batch.MicroBatchSize, From: from})
			if err != nil {
				return nil, err
			}
			st.r = r
			return r, nil
		}
		r, err := distill.OpenShards(dir, distill.ShardReaderOptions{BatchRows: 1})
		if err != nil {
			return nil, err
		}
		st.info = r.Info()
		r.Close()
		studentHash, err := distill.VocabHash(s.job.Model)
		if err != nil {
			return nil, err
		}
		if err := distill.CheckVocab(st.info, distill.Info{Name: s.job.Model, VocabSize: s.model.Config.VocabSize, VocabHash: studentHash}); err != nil {
			return nil, err
		}
		t = st
	} else if t, err = openTeacher(s.job, s, o.Log); err != nil {
		return nil, err
	}
	op, err := onPolicy(s, o)
	if err != nil {
		t.Close()
		return nil, err
	}
	o.Loss = distill.KDLoss(ctx, s.model, t, distill.LossConfig{Kind: kind, Beta: d.Beta, Temperature: d.Temperature,
		KDWeight: d.KDWeight, TopK: d.TopK, Renorm: d.Sparse == "renorm", OnPolicy: op})
	fmt.Fprintf(o.Log, "distilling from %s (%s, T=%g, kd_weight %g, top_k %d)\n", t.Info().Name, d.Loss, d.Temperature, d.KDWeight, d.TopK)
	return func() { t.Close() }, nil
}

// uldSetup swaps the loss for the cross-tokenizer ULD loss against the
// job's teacher (in-process, or a server whose tokenizer the job names),
// which may use another tokenizer than the student.
func uldSetup(ctx context.Context, s *session, o *train.Options) (func(), error) {
	d := s.job.Distill
	key, dir := "distill.teacher.model", d.Teacher.Model
	if d.Teacher.URL != "" {
		key, dir = "distill.teacher.tokenizer", d.Teacher.Tokenizer
	}
	ttok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: the teacher's tokenizer: %w", key, err)
	}
	stok, err := tokenizer.Load(s.job.Model)
	if err != nil {
		return nil, fmt.Errorf("model: the student's tokenizer: %w", err)
	}
	student := distill.Info{Name: s.job.Model, VocabSize: s.model.Config.VocabSize, VocabHash: distill.TokenizerHash(stok)}
	oo := teacherOptions(s.job, d.Teacher, s.model.Backend(), student, o.Log)
	oo.CrossTokenizer = d.CrossTokenizer
	if d.Teacher.URL != "" {
		oo.Server.Info.VocabHash, oo.Server.Info.VocabSize = distill.TokenizerHash(ttok), ttok.VocabSize()
	}
	t, err := distill.OpenTeacher(oo)
	if err != nil {
		return nil, err
	}
	op, err := onPolicy(s, o)
	if err != nil {
		t.Close()
		return nil, err
	}
	o.Loss = distill.ULDLoss(ctx, s.model, t, distill.ULDConfig{Temperature: d.Temperature, KDWeight: d.KDWeight,
		TopK: d.TopK, Student: stok, Teacher: ttok, Log: o.Log, OnPolicy: op})
	k := d.TopK
	if k <= 0 {
		k = distill.DefaultULDTopK
	}
	fmt.Fprintf(o.Log, "distilling from %s across tokenizers (%s teacher, %s student: ULD over the top %d sorted probabilities, T=%g, kd_weight %g)\n",
		t.Info().Name, ttok.Kind(), stok.Kind(), k, d.Temperature, d.KDWeight)
	return func() { t.Close() }, nil
}

// onPolicy sets up on-policy distillation when distill.on_policy > 0: the
// student samples the completions of that share of micro-batches itself
// (distill.generate's sampling, seeded from its seed, the step and the
// micro-batch), stopping at its tokenizer's or config's end tokens. nil
// when on_policy is 0: the run is exactly the off-policy one.
func onPolicy(s *session, o *train.Options) (*distill.OnPolicy, error) {
	d := s.job.Distill
	if d.OnPolicy <= 0 {
		return nil, nil
	}
	if d.Teacher.Shards != "" {
		return nil, fmt.Errorf("distill.on_policy: the shards teacher cannot score the student's samples; use distill.teacher.model or url")
	}
	tok, err := tokenizer.Load(s.job.Model)
	if err != nil {
		return nil, err
	}
	var stops []int
	for _, id := range append([]int{tok.EOS(), tok.EOT()}, s.model.Config.EOSIDs()...) {
		if id >= 0 && !slices.Contains(stops, id) {
			stops = append(stops, id)
		}
	}
	g := d.Generate
	op := &distill.OnPolicy{Student: s.model, Lambda: d.OnPolicy, Seed: g.Seed, MaxNewTokens: g.MaxNewTokens,
		Temperature: g.Temperature, TopP: g.TopP, StopIDs: stops}
	o.Rollout = op.Rollout
	fmt.Fprintf(o.Log, "on-policy (λ %g): the student completes that share of the micro-batches itself (temperature %g, top_p %g, max_new_tokens %d, capped by seq_len)\n",
		d.OnPolicy, g.Temperature, g.TopP, g.MaxNewTokens)
	return op, nil
}

// shardTeacher forwards to the shard reader the trainer opened last (the
// trainer reopens the data at every resume).
type shardTeacher struct {
	r    *distill.ShardReader
	info distill.Info
}

func (t *shardTeacher) Info() distill.Info { return t.info }
func (t *shardTeacher) Close() error       { return nil }
func (t *shardTeacher) TopK(ctx context.Context, b *data.Batch, k int) (*distill.TopK, error) {
	if t.r == nil {
		return nil, fmt.Errorf("distill: teacher shards are not open")
	}
	return t.r.TopK(ctx, b, k)
}
