package distill

import (
	"fmt"
	"io"

	"github.com/llamatune/llamatune/kernels"
)

// OpenOptions name a job's teacher: a model run in-process, or an
// OpenAI-compatible server (Server) when Model is empty. Offline top-k
// shards are opened with OpenShards: they are the data as well.
type OpenOptions struct {
	// Model is an HF model directory loaded onto Backend with its frozen
	// weights stored as Weights and its GEMMs computed in Compute.
	Model            string
	Backend          kernels.Backend
	Weights, Compute kernels.DType

	// Server: BaseURL and Model are required; an empty Info.VocabHash is
	// taken to mean the served model shares the student's tokenizer (a note
	// says so on Log); Info.VocabSize defaults to the student's.
	Server ServerOptions

	// Student is the vocabulary the teacher must share: logit distillation
	// compares distributions over one vocabulary.
	Student Info
	// CrossTokenizer "uld": the teacher may have another tokenizer (ULDLoss
	// aligns the two tokenizations). A server teacher then needs its
	// tokenizer's identity in Server.Info (VocabHash and VocabSize).
	CrossTokenizer string
	Log            io.Writer // notes (nil: none)
}

// OpenTeacher opens the teacher o names and checks that it shares the
// student's vocabulary (CheckVocab), unless o.CrossTokenizer is "uld": then
// the tokenizations are aligned instead (a server teacher must then say
// which tokenizer it has, in o.Server.Info).
// The caller closes it.
func OpenTeacher(o OpenOptions) (Teacher, error) {
	switch o.CrossTokenizer {
	case "":
	case "uld":
		if o.Model == "" && o.Server.Info.VocabHash == "" {
			return nil, fmt.Errorf("distill.cross_tokenizer: uld with a server teacher needs the teacher's tokenizer (distill.teacher.tokenizer): " +
				"the student's text is re-tokenized with it before the server scores it")
		}
	default:
		return nil, fmt.Errorf("distill.cross_tokenizer: %q is not one of uld (or empty)", o.CrossTokenizer)
	}
	var t Teacher
	switch {
	case o.Model != "":
		if o.Backend == nil {
			return nil, fmt.Errorf("teacher %s: no backend to run it on", o.Model)
		}
		ip, err := NewInProcess(o.Model, o.Backend, o.Weights)
		if err != nil {
			return nil, err
		}
		ip.Model().Compute = o.Compute
		t = ip
	case o.Server.BaseURL != "":
		so := o.Server
		if so.Info.Name == "" {
			so.Info.Name = so.Model
		}
		if so.Info.VocabSize == 0 {
			so.Info.VocabSize = o.Student.VocabSize
		}
		if so.Info.VocabHash == "" {
			so.Info.VocabHash = o.Student.VocabHash
			if o.Log != nil {
				fmt.Fprintf(o.Log, "note: distill.teacher.vocab_hash is not set: assuming %s serves a model with the student's tokenizer (%s); set it to have the vocabulary checked\n", so.Model, o.Student.VocabHash)
			}
		}
		var err error
		if t, err = NewServer(so); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("no teacher: set distill.teacher.model (a model directory) or distill.teacher.url and name (a server)")
	}
	if o.CrossTokenizer == "uld" {
		if o.Log != nil && t.Info().VocabHash != o.Student.VocabHash {
			fmt.Fprintf(o.Log, "note: teacher %s and student %s have different tokenizers (vocab %d and %d): distilling across tokenizers (ULD)\n",
				t.Info().Name, o.Student.Name, t.Info().VocabSize, o.Student.VocabSize)
		}
		return t, nil
	}
	if err := CheckVocab(t.Info(), o.Student); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}
