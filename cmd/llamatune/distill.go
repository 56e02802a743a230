package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
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

// openTeacher makes the job's teacher and checks it shares the student's
// vocabulary.
func openTeacher(job *configs.Job, s *session, log io.Writer) (distill.Teacher, error) {
	d := job.Distill
	studentHash, err := distill.VocabHash(job.Model)
	if err != nil {
		return nil, err
	}
	student := distill.Info{Name: job.Model, VocabSize: s.model.Config.VocabSize, VocabHash: studentHash}
	var t distill.Teacher
	switch {
	case d.Teacher.Model != "":
		dt := kernels.F32
		if job.Precision.Weights == "bf16" {
			dt = kernels.BF16
		}
		ip, err := distill.NewInProcess(d.Teacher.Model, s.model.Backend(), dt)
		if err != nil {
			return nil, err
		}
		if err := setCompute(job, ip.Model()); err != nil {
			return nil, err
		}
		t = ip
	case d.Teacher.URL != "":
		hash := d.Teacher.VocabHash
		if hash == "" {
			hash = studentHash
			fmt.Fprintf(log, "note: distill.teacher.vocab_hash is not set: assuming %s serves a model with the student's tokenizer (%s); set it to have the vocabulary checked\n", d.Teacher.Name, studentHash)
		}
		if t, err = distill.NewServer(distill.ServerOptions{BaseURL: d.Teacher.URL, Model: d.Teacher.Name,
			APIKeyEnv: d.Teacher.APIKeyEnv, Concurrency: d.Teacher.Concurrency,
			Timeout: time.Duration(d.Teacher.Timeout * float64(time.Second)), MaxRetries: d.Teacher.Retries,
			Info: distill.Info{Name: d.Teacher.Name, VocabSize: s.model.Config.VocabSize, VocabHash: hash}}); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("distill.teacher.shards: opened by distillSetup")
	}
	if err := distill.CheckVocab(t.Info(), student); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// distillSetup swaps the loss for the KD loss against the job's teacher.
func distillSetup(ctx context.Context, s *session, o *train.Options) (func(), error) {
	d := s.job.Distill
	kind, err := distill.ParseKind(d.Loss)
	if err != nil {
		return nil, err
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
	o.Loss = distill.KDLoss(ctx, s.model, t, distill.LossConfig{Kind: kind, Beta: d.Beta, Temperature: d.Temperature,
		KDWeight: d.KDWeight, TopK: d.TopK, Renorm: d.Sparse == "renorm"})
	fmt.Fprintf(o.Log, "distilling from %s (%s, T=%g, kd_weight %g, top_k %d)\n", t.Info().Name, d.Loss, d.Temperature, d.KDWeight, d.TopK)
	return func() { t.Close() }, nil
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
