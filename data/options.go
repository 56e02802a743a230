// Package data streams training examples from Arrow / Parquet / JSONL sources, turns them into
// token ids with loss masks, packs them into fixed-length rows and hands the trainer batches
// together with a resumable cursor.
//
// Data flow: shards (record batches, never a whole dataset in memory) → column mapping →
// windowed seeded shuffle → weighted mixing of datasets → tokenization (parallel, order kept)
// → labels (-100 where no loss) → truncation → packer → Batch{..., Cursor}.
//
// Everything after the shard readers is a deterministic function of (Options, data files), so a
// pipeline restored from a Cursor yields exactly the batches an uninterrupted one would.
package data

import (
	"fmt"
	"strings"
)

// IgnoreIndex is the label of a position that takes no loss (prompt, system/user turns,
// padding, first token of every document).
const IgnoreIndex = -100

// Format of a dataset's files.
type Format string

const (
	FormatAuto    Format = "auto"
	FormatHF      Format = "hf"      // datasets.save_to_disk directory (Arrow IPC streams)
	FormatArrow   Format = "arrow"   // Arrow IPC file or stream (detected by magic)
	FormatParquet Format = "parquet" // Parquet, read row group by row group
	FormatJSONL   Format = "jsonl"   // one JSON object per line (optionally .gz)
)

// Type says which columns an example is built from.
type Type string

const (
	TypeAuto             Type = "auto"
	TypeText             Type = "text"              // column text: loss on every token
	TypeMessages         Type = "messages"          // list of {role, content}, rendered by a chat template
	TypePromptCompletion Type = "prompt_completion" // loss on the completion only (unless TrainOnPrompt)
	TypeTokenized        Type = "tokenized"         // input_ids (+ labels) used as is
)

// Truncation is the policy for documents longer than SeqLen.
type Truncation string

const (
	TruncateKeepStart Truncation = "truncate" // keep the first SeqLen tokens
	TruncateSplit     Truncation = "split"    // cut into chunks of SeqLen tokens
	TruncateDrop      Truncation = "drop"     // drop the document (counted in Stats)
)

// BadRows is the policy for a row that cannot be turned into an example.
type BadRows string

const (
	BadRowsFail BadRows = "fail" // stop with an error naming file and row
	BadRowsSkip BadRows = "skip" // skip it, count it in Stats and report it to OnBadRow
)

// TrainOn selects which chat turns take loss.
type TrainOn string

const (
	TrainOnAssistant TrainOn = "assistant"
	TrainOnAll       TrainOn = "all"
)

// Stop decides when a mixture of datasets ends.
type Stop string

const (
	StopAllExhausted   Stop = "all_exhausted"   // run every dataset through all its epochs
	StopFirstExhausted Stop = "first_exhausted" // end as soon as one dataset runs out (keeps the weight ratio exact)
)

// Split picks the train or eval side of a dataset split by EvalFraction.
type Split string

const (
	SplitAll   Split = ""      // every row
	SplitTrain Split = "train" // rows whose hash is >= EvalFraction
	SplitEval  Split = "eval"  // rows whose hash is < EvalFraction
)

// Columns maps example fields to column names. Empty names take the defaults
// (text, messages, prompt, completion, input_ids, labels).
type Columns struct {
	Text        string `json:"text,omitempty"`
	Messages    string `json:"messages,omitempty"`
	Prompt      string `json:"prompt,omitempty"`
	Completion  string `json:"completion,omitempty"`
	InputIDs    string `json:"input_ids,omitempty"`
	Labels      string `json:"labels,omitempty"`
	PositionIDs string `json:"position_ids,omitempty"`
	DocStart    string `json:"doc_start,omitempty"`
	NumTokens   string `json:"num_tokens,omitempty"`
}

func (c Columns) withDefaults() Columns {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&c.Text, "text")
	def(&c.Messages, "messages")
	def(&c.Prompt, "prompt")
	def(&c.Completion, "completion")
	def(&c.InputIDs, "input_ids")
	def(&c.Labels, "labels")
	def(&c.PositionIDs, "position_ids")
	def(&c.DocStart, "doc_start")
	def(&c.NumTokens, "num_tokens")
	return c
}

// DatasetSpec describes one dataset of a mixture.
type DatasetSpec struct {
	Name    string  // for messages and stats; defaults to Path
	Path    string  // file, directory (HF save_to_disk, prepared, or a folder of shards) or glob
	Format  Format  // auto by default
	Type    Type    // auto by default: detected from the columns present
	Columns Columns // column names
	Weight  float64 // mixing weight (default 1)
	Split   string  // HF DatasetDict split (default "train")
	Epochs  int     // passes over this dataset; 0 = Options.Epochs
}

// Tokenizer is what the pipeline needs from data/tokenizer.Tokenizer (which satisfies it).
type Tokenizer interface {
	Encode(text string) []int
	EncodeWithSpecial(text string) []int
	VocabSize() int
	BOS() int
	EOS() int
}

// Segment is a piece of rendered chat text and whether it takes loss.
type Segment struct {
	Text  string
	Train bool
}

// Message is one chat turn.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// ChatRenderer renders a conversation into segments. The default uses data/chat.
type ChatRenderer func(template string, msgs []Message) ([]Segment, error)

// Options configure a Pipeline. Zero values take the documented defaults.
type Options struct {
	Datasets []DatasetSpec

	Tokenizer Tokenizer    // required unless every dataset is tokenized
	VocabSize int          // checks tokenized ids when there is no Tokenizer (0: no check)
	Chat      ChatRenderer // default: data/chat.Render
	Template  string       // chat template name (llama3|llama2|chatml|model); default llama3
	TrainOn   TrainOn      // assistant (default) | all
	// TrainOnPrompt also puts loss on the prompt of prompt_completion examples.
	TrainOnPrompt bool
	NoBOS         bool // don't prepend BOS to text / prompt_completion examples
	NoEOS         bool // don't append EOS to text / prompt_completion examples

	SeqLen     int        // tokens per row (required)
	BatchRows  int        // rows per batch (default 1)
	Packing    bool       // pack several documents per row
	PackPool   int        // open rows the best-fit packer keeps (default 8; 1 = greedy)
	Truncation Truncation // default truncate
	PadID      int        // pad token id; -1 = tokenizer EOS (or 0 without tokenizer)
	DropLast   bool       // drop a final batch with fewer than BatchRows rows

	ShuffleBuffer int    // window of rows shuffled together; <= 1 = no shuffle (shard order kept too)
	Seed          uint64 // seed for shuffling and mixing
	Epochs        int    // passes over each dataset (default 1); < 0 = repeat forever
	Stop          Stop   // default all_exhausted

	EvalFraction float64 // fraction of rows set aside for eval by a stable hash of (shard, row)
	Split        Split   // which side of EvalFraction to read

	BadRows  BadRows         // fail (default) | skip
	OnBadRow func(err error) // called for each skipped row (policy skip)
	Workers  int             // tokenizer goroutines (default 2)
}

func (o *Options) normalize() error {
	var errs []string
	if o.SeqLen <= 0 {
		errs = append(errs, fmt.Sprintf("seq_len must be > 0 (got %d)", o.SeqLen))
	}
	if o.BatchRows <= 0 {
		o.BatchRows = 1
	}
	if o.PackPool <= 0 {
		o.PackPool = 8
	}
	if o.Truncation == "" {
		o.Truncation = TruncateKeepStart
	}
	switch o.Truncation {
	case TruncateKeepStart, TruncateSplit, TruncateDrop:
	default:
		errs = append(errs, fmt.Sprintf("truncation %q: use truncate, split or drop", o.Truncation))
	}
	if o.Epochs == 0 {
		o.Epochs = 1
	}
	if o.Stop == "" {
		o.Stop = StopAllExhausted
	}
	if o.Stop != StopAllExhausted && o.Stop != StopFirstExhausted {
		errs = append(errs, fmt.Sprintf("stop %q: use all_exhausted or first_exhausted", o.Stop))
	}
	if o.BadRows == "" {
		o.BadRows = BadRowsFail
	}
	if o.BadRows != BadRowsFail && o.BadRows != BadRowsSkip {
		errs = append(errs, fmt.Sprintf("bad_rows %q: use fail or skip", o.BadRows))
	}
	if o.TrainOn == "" {
		o.TrainOn = TrainOnAssistant
	}
	if o.TrainOn != TrainOnAssistant && o.TrainOn != TrainOnAll {
		errs = append(errs, fmt.Sprintf("train_on %q: use assistant or all", o.TrainOn))
	}
	if o.Template == "" {
		o.Template = "llama3"
	}
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.EvalFraction < 0 || o.EvalFraction >= 1 {
		errs = append(errs, fmt.Sprintf("eval fraction %v must be in [0, 1)", o.EvalFraction))
	}
	if o.Split == SplitEval && o.EvalFraction == 0 {
		errs = append(errs, "eval split requested but eval fraction is 0")
	}
	if len(o.Datasets) == 0 {
		errs = append(errs, "no datasets: add at least one entry under data.datasets")
	}
	for i := range o.Datasets {
		d := &o.Datasets[i]
		if d.Path == "" {
			errs = append(errs, fmt.Sprintf("datasets[%d]: path is empty", i))
		}
		if d.Name == "" {
			d.Name = d.Path
		}
		if d.Format == "" {
			d.Format = FormatAuto
		}
		switch d.Format {
		case FormatAuto, FormatHF, FormatArrow, FormatParquet, FormatJSONL:
		default:
			errs = append(errs, fmt.Sprintf("datasets[%d].format %q: use auto, hf, arrow, parquet or jsonl", i, d.Format))
		}
		if d.Type == "" {
			d.Type = TypeAuto
		}
		switch d.Type {
		case TypeAuto, TypeText, TypeMessages, TypePromptCompletion, TypeTokenized:
		default:
			errs = append(errs, fmt.Sprintf("datasets[%d].type %q: use text, messages, prompt_completion or tokenized", i, d.Type))
		}
		if d.Weight == 0 {
			d.Weight = 1
		}
		if d.Weight < 0 {
			errs = append(errs, fmt.Sprintf("datasets[%d].weight %v must be > 0", i, d.Weight))
		}
		if d.Epochs == 0 {
			d.Epochs = o.Epochs
		}
		d.Columns = d.Columns.withDefaults()
	}
	if len(errs) > 0 {
		return fmt.Errorf("data options: %s", strings.Join(errs, "; "))
	}
	return nil
}
