package tokenizer

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	loadOnce sync.Map // kind → *loaded
)

type loaded struct {
	once sync.Once
	tok  Tokenizer
	err  error
}

// testTokenizer materializes the embedded tokenizer of kind in a temp dir and loads it once.
func testTokenizer(t testing.TB, kind string) Tokenizer {
	t.Helper()
	v, _ := loadOnce.LoadOrStore(kind, &loaded{})
	l := v.(*loaded)
	l.once.Do(func() {
		dir, err := os.MkdirTemp("", "toktest")
		if err != nil {
			l.err = err
			return
		}
		defer os.RemoveAll(dir)
		if l.err = WriteFiles(dir, kind); l.err != nil {
			return
		}
		l.tok, l.err = Load(dir)
	})
	if l.err != nil {
		t.Fatalf("load %s: %v", kind, l.err)
	}
	return l.tok
}

func readIDs(t testing.TB, path string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int
	for _, f := range strings.Fields(string(data)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, n)
	}
	return ids
}

type trickyCase struct {
	Name          string `json:"name"`
	Text          string `json:"text"`
	Llama3        []int  `json:"llama3_ids"`
	Llama2        []int  `json:"llama2_ids"`
	Llama3Special []int  `json:"llama3_ids_special_parsed"`
}

func trickyCases(t testing.TB) []trickyCase {
	t.Helper()
	data, err := os.ReadFile("testdata/tricky-cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Cases []trickyCase }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) != 25 {
		t.Fatalf("tricky-cases.json has %d cases, want 25", len(f.Cases))
	}
	return f.Cases
}

func firstDiff(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func checkIDs(t *testing.T, what string, got, want []int) {
	t.Helper()
	if !slices.Equal(got, want) {
		i := firstDiff(got, want)
		t.Errorf("%s: %d ids, want %d; first difference at %d:\n got %v\nwant %v", what, len(got), len(want), i,
			got[max(0, i-3):min(len(got), i+5)], want[max(0, i-3):min(len(want), i+5)])
	}
}

func TestWarAndPeaceParity(t *testing.T) {
	text, err := os.ReadFile("testdata/war-and-peace-first20k.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"llama3", "llama2"} {
		t.Run(kind, func(t *testing.T) {
			tok := testTokenizer(t, kind)
			want := readIDs(t, "testdata/war-and-peace-first20k."+kind+".ids")
			got := tok.Encode(string(text))
			checkIDs(t, "war-and-peace-first20k", got, want)
			if dec := tok.Decode(got); dec != string(text) {
				t.Errorf("decode(encode(text)) differs from text (len %d vs %d)", len(dec), len(text))
			}
		})
	}
}

func TestTrickyCases(t *testing.T) {
	for _, kind := range []string{"llama3", "llama2"} {
		t.Run(kind, func(t *testing.T) {
			tok := testTokenizer(t, kind)
			for _, c := range trickyCases(t) {
				want := c.Llama3
				if kind == "llama2" {
					want = c.Llama2
				}
				got := tok.Encode(c.Text)
				checkIDs(t, c.Name, got, want)
				if dec := tok.Decode(got); dec != c.Text {
					t.Errorf("%s: decode(encode(x)) = %q, want %q", c.Name, dec, c.Text)
				}
				if kind == "llama3" && c.Llama3Special != nil {
					got := tok.EncodeWithSpecial(c.Text)
					checkIDs(t, c.Name+" (special parsed)", got, c.Llama3Special)
					if dec := tok.Decode(got); dec != c.Text {
						t.Errorf("%s: decode(encodeWithSpecial(x)) = %q, want %q", c.Name, dec, c.Text)
					}
				}
			}
		})
	}
}
