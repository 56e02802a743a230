package distill

import (
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
)

// Alignment pairs the positions of a student's packed batch with those of
// the same text tokenized by a teacher with another tokenizer (ULD).
type Alignment struct {
	// Teacher is the teacher's packed batch: row r holds the teacher's
	// tokenization of the documents of the student's row r, in order, each
	// its own document (no attention across them); padding at the tail.
	Teacher *data.Batch
	// Student[i] (a flat index into the student's batch) predicts its next
	// token from the same text as Teacher position TeacherPos[i] does.
	Student, TeacherPos []int32
}

// Align re-tokenizes every document of the student's batch b with the
// teacher's tokenizer and pairs positions by character span: student
// position i (predicting token i+1) is paired with the teacher position
// whose token ends at the same byte of the text as student token i (the
// standard "both tokenizations have a boundary there" alignment), so both
// predict the next token from the same text. Positions without such a
// teacher position carry no ULD term (they keep their cross-entropy).
// The text of a student document is its tokens decoded (tokenizer.TokenEnds
// gives each token's end in it).
func Align(b *data.Batch, student, teacher tokenizer.Tokenizer) *Alignment {
	type doc struct {
		row, start int // student
		ids, match []int
	}
	var docs []doc
	rowLen := make([]int, b.Rows)
	for _, d := range documents(b) { // padding positions stand alone: no documents
		ids := make([]int, d.end-d.start)
		for i := range ids {
			ids[i] = int(b.InputIDs[d.row*b.SeqLen+d.start+i])
		}
		tids, match := AlignDoc(ids, student, teacher)
		docs = append(docs, doc{d.row, d.start, tids, match})
		rowLen[d.row] += len(tids)
	}
	seqLen := 1
	for _, n := range rowLen {
		seqLen = max(seqLen, n)
	}
	tb := &data.Batch{Rows: b.Rows, SeqLen: seqLen}
	n := b.Rows * seqLen
	tb.InputIDs, tb.Labels, tb.PositionIDs, tb.DocStart = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
	for i := range tb.Labels {
		tb.Labels[i] = kernels.IgnoreIndex
		tb.DocStart[i] = int32(i % seqLen) // padding: each position its own document
	}
	a := &Alignment{Teacher: tb}
	fill := make([]int, b.Rows)
	for _, d := range docs {
		o := d.row*seqLen + fill[d.row]
		for i, id := range d.ids {
			tb.InputIDs[o+i] = int32(id)
			tb.PositionIDs[o+i] = int32(i)
			tb.DocStart[o+i] = int32(fill[d.row])
		}
		for i, m := range d.match {
			if m >= 0 {
				a.Student = append(a.Student, int32(d.row*b.SeqLen+d.start+i))
				a.TeacherPos = append(a.TeacherPos, int32(o+m))
			}
		}
		fill[d.row] += len(d.ids)
	}
	return a
}

// AlignDoc re-tokenizes one student document (ids) for the teacher. It
// returns the teacher's ids and, for each student position i, the teacher
// position that predicts from the same text prefix (−1: none). Only
// positions that have a next token on both sides are paired.
//
// The student's begin/end-of-text and end-of-turn tokens become the
// teacher's (they stand for no text); the text between them is decoded and
// encoded with the teacher's tokenizer. A special token the teacher lacks,
// and every other token, is text.
func AlignDoc(ids []int, student, teacher tokenizer.Tokenizer) (tids, match []int) {
	sEnds := tokenizer.TokenEnds(student, ids)
	match = make([]int, len(ids))
	for i := range match {
		match[i] = -1
	}
	text := student.Decode(ids)
	if len(ids) == 0 || len(text) != sEnds[len(ids)-1] {
		return nil, match // decoding does not follow the token spans: no alignment
	}
	var tEnds []int
	runStart := 0 // byte where the current text run starts
	flush := func(end int) {
		if end > runStart {
			run := teacher.Encode(text[runStart:end])
			tids = append(tids, run...)
			for _, e := range tokenizer.TokenEnds(teacher, run) {
				tEnds = append(tEnds, runStart+e)
			}
		}
		runStart = end
	}
	for i, id := range ids {
		start := 0
		if i > 0 {
			start = sEnds[i-1]
		}
		if t := mapSpecial(id, student, teacher); t >= 0 {
			flush(start)
			tids = append(tids, t)
			tEnds = append(tEnds, sEnds[i])
			runStart = sEnds[i]
		}
	}
	flush(len(text))
	// Pair by end offset: the last teacher position ending where student
	// token i ends, when both have a next token. Ends never decrease.
	r := 0
	for i := 0; i+1 < len(ids); i++ {
		for r+1 < len(tEnds) && tEnds[r+1] <= sEnds[i] {
			r++
		}
		if r < len(tEnds) && r+1 < len(tids) && tEnds[r] == sEnds[i] {
			match[i] = r
		}
	}
	return tids, match
}

// mapSpecial is the teacher's id for the student's begin-of-text,
// end-of-text or end-of-turn token id (−1: id is none of them, or the
// teacher has no such token).
func mapSpecial(id int, student, teacher tokenizer.Tokenizer) int {
	switch id {
	case student.BOS():
		return teacher.BOS()
	case student.EOS():
		return teacher.EOS()
	case student.EOT():
		return teacher.EOT()
	}
	return -1
}
