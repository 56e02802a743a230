package distill

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
)

// uldReference is ULD by its definition, in float64: both distributions
// sorted in full, the shorter zero-padded, truncated to k, plus the
// difference of the masses past rank k.
func uldReference(z []float64, T float64, q []float64, k int) float64 {
	mx := slices.Max(z)
	p := make([]float64, len(z))
	var sum float64
	for j, v := range z {
		p[j] = math.Exp((v - mx) / T)
		sum += p[j]
	}
	for j := range p {
		p[j] /= sum
	}
	sort.Sort(sort.Reverse(sort.Float64Slice(p)))
	var l float64
	P, Q := 1.0, 1.0
	for i := 0; i < k; i++ {
		var a, b float64
		if i < len(p) {
			a = p[i]
		}
		if i < len(q) {
			b = q[i]
		}
		l += math.Abs(a - b)
		P, Q = P-a, Q-b
	}
	if k >= len(p) {
		P = 0
	}
	return l + math.Abs(max(P, 0)-max(Q, 0))
}

// The ULD loss against its float64 definition, and its gradient with
// respect to the student's logits against central differences of that
// definition, at temperatures 1 and 2, with k below, at and above the
// student's vocabulary (zero padding on either side).
func TestULDGradient(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, c := range []struct {
		V, k int
		T    float64
	}{{12, 5, 1}, {12, 12, 2}, {7, 10, 1.5}, {40, 8, 1}} {
		z := make([]float32, 3*c.V)
		for i := range z {
			z[i] = float32(r.NormFloat64() * 3) // far from uniform
		}
		q := make([]float32, 3*c.k)
		for row := 0; row < 3; row++ {
			// A teacher distribution over a vocabulary of 9, sorted, truncated to k.
			tv := make([]float64, 9)
			var s float64
			for i := range tv {
				tv[i] = math.Exp(r.NormFloat64() * 2)
				s += tv[i]
			}
			sort.Sort(sort.Reverse(sort.Float64Slice(tv)))
			for i := 0; i < min(c.k, 9); i++ {
				q[row*c.k+i] = float32(tv[i] / s)
			}
		}
		dz := make([]float32, len(z))
		got := uldRows(z, 3, q, c.k, float32(1/c.T), dz, 0.5)
		var want float64
		ref := func(row int, zz []float64) float64 {
			qq := make([]float64, c.k)
			for i := range qq {
				qq[i] = float64(q[row*c.k+i])
			}
			return uldReference(zz, c.T, qq, c.k)
		}
		for row := 0; row < 3; row++ {
			zz := make([]float64, c.V)
			for j := range zz {
				zz[j] = float64(z[row*c.V+j])
			}
			want += ref(row, zz)
			const eps = 1e-4
			for j := 0; j < c.V; j++ {
				zp, zm := slices.Clone(zz), slices.Clone(zz)
				zp[j] += eps
				zm[j] -= eps
				num := 0.5 * (ref(row, zp) - ref(row, zm)) / (2 * eps)
				if d := math.Abs(float64(dz[row*c.V+j]) - num); d > 1e-4+1e-3*math.Abs(num) {
					t.Errorf("V %d k %d T %g: dz[%d][%d] = %.6g, central difference %.6g", c.V, c.k, c.T, row, j, dz[row*c.V+j], num)
				}
			}
		}
		if math.Abs(got-want) > 1e-5 {
			t.Errorf("V %d k %d T %g: ULD %.7g, definition %.7g", c.V, c.k, c.T, got, want)
		}
	}
}

// loadTokenizers writes and loads the real Llama 2 and Llama 3 tokenizers.
func loadTokenizers(t *testing.T) (llama2, llama3 tokenizer.Tokenizer) {
	t.Helper()
	var toks [2]tokenizer.Tokenizer
	for i, kind := range []string{"llama2", "llama3"} {
		dir := t.TempDir()
		if err := tokenizer.WriteFiles(dir, kind); err != nil {
			t.Fatal(err)
		}
		tok, err := tokenizer.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		toks[i] = tok
	}
	return toks[0], toks[1]
}

// Alignment by character span on a text the two tokenizers split
// differently: a Llama 2 student and a Llama 3 teacher. A student position
// is paired with the teacher position whose token ends at the same byte
// (both then predict from the same text); "▁disag|ree", "▁un|bel|iev|ably",
// the digits and "▁c|af|és" leave positions with no teacher boundary, which
// get none. BOS and EOS become the teacher's.
func TestAlignDoc(t *testing.T) {
	l2, l3 := loadTokenizers(t)
	text := "Tokenizers disagree: unbelievably, 12345 naïve cafés!"
	ids := append(append([]int{l2.BOS()}, l2.Encode(text)...), l2.EOS())
	tids, match := AlignDoc(ids, l2, l3)
	wantT := append(append([]int{l3.BOS()}, l3.Encode(text)...), l3.EOS())
	if !slices.Equal(tids, wantT) {
		t.Fatalf("teacher ids %v, want %v", tids, wantT)
	}
	// Student tokens: <s> ▁Token izers ▁disag ree : ▁un bel iev ably , ▁ 1 2 3 4 5 ▁na ï ve ▁c af és ! </s>
	// Teacher tokens: <|begin_of_text|> Token izers ␣disagree : ␣unbelie vably , ␣ 123 45 ␣naï ve ␣caf és ! <|end_of_text|>
	want := []int{0, 1, 2, -1, 3, 4, -1, -1, -1, 6, 7, 8, -1, -1, 9, -1, 10, -1, 11, 12, -1, 13, 14, 15, -1}
	if !slices.Equal(match, want) {
		t.Fatalf("pairs\n got %v\nwant %v", match, want)
	}
	// Every pair predicts from the same text: the decoded prefixes agree
	// once the special tokens' own text is set aside.
	strip := func(tok tokenizer.Tokenizer, ids []int) string {
		return tok.Decode(slices.DeleteFunc(slices.Clone(ids), func(id int) bool { return id == tok.BOS() || id == tok.EOS() }))
	}
	for _, dir := range []struct {
		s, t tokenizer.Tokenizer
		ids  []int
	}{{l2, l3, ids}, {l3, l2, wantT}} {
		tids, match := AlignDoc(dir.ids, dir.s, dir.t)
		n := 0
		for i, r := range match {
			if r < 0 {
				continue
			}
			n++
			if a, b := strings.TrimPrefix(strip(dir.s, dir.ids[:i+1]), " "), strings.TrimPrefix(strip(dir.t, tids[:r+1]), " "); a != b {
				t.Errorf("%s→%s: student %d prefix %q, teacher %d prefix %q", dir.s.Kind(), dir.t.Kind(), i, a, r, b)
			}
		}
		if n < len(match)/2 {
			t.Errorf("%s→%s: only %d of %d positions paired", dir.s.Kind(), dir.t.Kind(), n, len(match))
		}
	}
}

// Align on a packed batch: two documents and padding in one row, one in
// the other; the teacher's batch keeps rows and documents apart, and every
// pair points inside the right document.
func TestAlignBatch(t *testing.T) {
	l2, l3 := loadTokenizers(t)
	docs := [][]string{{"Hello world, again.", "Cross-tokenizer"}, {"unbelievably fine"}}
	b := &data.Batch{Rows: 2, SeqLen: 16}
	n := b.Rows * b.SeqLen
	b.InputIDs, b.Labels, b.PositionIDs, b.DocStart = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
	var texts [][2]int // student doc start (flat), length
	for r, row := range docs {
		pos := 0
		for _, d := range row {
			ids := append([]int{l2.BOS()}, l2.Encode(d)...)
			for i, id := range ids {
				o := r*b.SeqLen + pos + i
				b.InputIDs[o], b.Labels[o], b.PositionIDs[o], b.DocStart[o] = int32(id), int32(id), int32(i), int32(pos)
			}
			texts = append(texts, [2]int{r*b.SeqLen + pos, len(ids)})
			pos += len(ids)
		}
		for ; pos < b.SeqLen; pos++ {
			o := r*b.SeqLen + pos
			b.Labels[o], b.DocStart[o] = data.IgnoreIndex, int32(pos)
		}
	}
	a := Align(b, l2, l3)
	tb := a.Teacher
	if tb.Rows != 2 || len(tb.InputIDs) != 2*tb.SeqLen {
		t.Fatalf("teacher batch %d×%d with %d ids", tb.Rows, tb.SeqLen, len(tb.InputIDs))
	}
	want := [][]int{append(append([]int{l3.BOS()}, l3.Encode(docs[0][0])...), append([]int{l3.BOS()}, l3.Encode(docs[0][1])...)...),
		append([]int{l3.BOS()}, l3.Encode(docs[1][0])...)}
	for r, w := range want {
		got := make([]int, len(w))
		for i := range w {
			got[i] = int(tb.InputIDs[r*tb.SeqLen+i])
		}
		if !slices.Equal(got, w) {
			t.Fatalf("teacher row %d: %v, want %v", r, got, w)
		}
	}
	second := len(l3.Encode(docs[0][0])) + 1 // the teacher's second document in row 0
	if tb.DocStart[second] != int32(second) || tb.PositionIDs[second] != 0 || tb.DocStart[second-1] != 0 {
		t.Fatalf("teacher documents not kept apart: doc starts %v", tb.DocStart[:tb.SeqLen])
	}
	if len(a.Student) < 10 || len(a.Student) != len(a.TeacherPos) {
		t.Fatalf("%d student / %d teacher positions paired", len(a.Student), len(a.TeacherPos))
	}
	for i, s := range a.Student {
		sr, tr := int(s)/b.SeqLen, int(a.TeacherPos[i])/tb.SeqLen
		if sr != tr || b.Labels[s] == data.IgnoreIndex || !hasNext(tb, int(a.TeacherPos[i])) {
			t.Fatalf("pair %d: student %d (row %d), teacher %d (row %d)", i, s, sr, a.TeacherPos[i], tr)
		}
	}

	// A batch without DocStart is one document per row, as everywhere else.
	one := &data.Batch{Rows: 1, SeqLen: 8, InputIDs: slices.Clone(b.InputIDs[16:24]), Labels: slices.Clone(b.Labels[16:24]),
		PositionIDs: slices.Clone(b.PositionIDs[16:24])}
	withStarts := *one
	withStarts.DocStart = make([]int32, 8)
	if got, want := Align(one, l2, l3), Align(&withStarts, l2, l3); !slices.Equal(got.Student, want.Student) ||
		!slices.Equal(got.Teacher.InputIDs, want.Teacher.InputIDs) {
		t.Fatalf("nil DocStart aligns %v, zero DocStart %v", got.Student, want.Student)
	}
}

// hasNext: position i of b has a next token in its document.
func hasNext(b *data.Batch, i int) bool {
	return i%b.SeqLen+1 < b.SeqLen && b.DocStart[i+1] == b.DocStart[i]
}
