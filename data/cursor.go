package data

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
)

const cursorVersion = 1

// Cursor is the exact position of a pipeline after a batch: every dataset's pass, shard, row,
// shuffle window and RNG state, plus the packer's carry-over rows. It round-trips through JSON
// (MarshalJSON / ParseCursor); a pipeline opened with it yields exactly the batches an
// uninterrupted one would have.
type Cursor struct {
	Version     int         `json:"version"`
	Fingerprint string      `json:"fingerprint"` // hash of the options and shard lists that fix the order
	Mix         mixCursor   `json:"mix"`
	Packer      packerState `json:"packer"`
	Batches     int64       `json:"batches"` // batches handed out so far
}

// IsZero reports whether c is the zero Cursor (the start of the data).
func (c Cursor) IsZero() bool { return c.Version == 0 }

// ParseCursor decodes a cursor written with json.Marshal.
func ParseCursor(b []byte) (Cursor, error) {
	var c Cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return Cursor{}, fmt.Errorf("data cursor: %v; the checkpoint's cursor is damaged — resume without it to start the data from the beginning", err)
	}
	if c.Version != cursorVersion {
		return Cursor{}, fmt.Errorf("data cursor: version %d, this build reads version %d", c.Version, cursorVersion)
	}
	return c, nil
}

type cursorError struct{ msg string }

func (e *cursorError) Error() string { return "data cursor: " + e.msg }

func errCursor(format string, args ...any) error {
	return &cursorError{fmt.Sprintf(format, args...)}
}

// fingerprint hashes everything that decides which document lands where. Batch size, epochs,
// stop policy, bad-row policy and worker count are left out on purpose: changing them on resume
// is legitimate (e.g. switch to bad_rows: skip to get past a bad row, or train for more epochs).
func fingerprint(o *Options, shards [][]shard, types []Type) string {
	type ds struct {
		Type    Type
		Columns Columns
		Weight  float64
		Shards  []string
	}
	v := struct {
		SeqLen, PackPool, PadID, ShuffleBuffer int
		Packing, TrainOnPrompt, NoBOS, NoEOS   bool
		Truncation                             Truncation
		Seed                                   uint64
		EvalFraction                           float64
		Split                                  Split
		Template                               string
		TrainOn                                TrainOn
		Datasets                               []ds
	}{o.SeqLen, o.PackPool, o.PadID, o.ShuffleBuffer, o.Packing, o.TrainOnPrompt, o.NoBOS, o.NoEOS,
		o.Truncation, o.Seed, o.EvalFraction, o.Split, o.Template, o.TrainOn, nil}
	for i, d := range o.Datasets {
		x := ds{Type: types[i], Columns: d.Columns, Weight: d.Weight}
		for _, s := range shards[i] {
			x.Shards = append(x.Shards, filepath.Base(s.path))
		}
		v.Datasets = append(v.Datasets, x)
	}
	b, _ := json.Marshal(v)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}
