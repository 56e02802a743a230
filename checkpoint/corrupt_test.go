package checkpoint

import (
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
)

// corruptCase is a malformed file and the words its error must contain
// (besides the file name, which every error must name).
type corruptCase struct {
	name  string
	file  []byte
	parts []string
}

func u64(n uint64) []byte { return binary.LittleEndian.AppendUint64(nil, n) }

func corruptCases() []corruptCase {
	t := func(key, dtype, shape, offs string) string {
		return `"` + key + `":{"dtype":"` + dtype + `","shape":` + shape + `,"data_offsets":` + offs + `}`
	}
	obj := func(entries ...string) string { return "{" + strings.Join(entries, ",") + "}" }
	return []corruptCase{
		{"empty file", nil, []string{"0 bytes", "shorter than the 8-byte"}},
		{"shorter than 8 bytes", []byte{1, 0, 0}, []string{"3 bytes", "shorter than the 8-byte"}},
		{"header length past end", append(u64(1000), `{}`...), []string{"header length 1000", "larger than"}},
		{"header length absurd", append(u64(1<<40), `{}`...), []string{"limit"}},
		{"header length u64 max", append(u64(^uint64(0)), `{}`...), []string{"limit"}},
		{"header length zero", u64(0), []string{"not a JSON object"}},
		{"not an object", rawFile(`[1,2]`, nil), []string{"not a JSON object"}},
		{"invalid JSON", rawFile(`{"w":{"dtype":"F32",`, nil), []string{"invalid JSON"}},
		{"invalid JSON inside tensor", rawFile(`{"w":{"dtype":"F32" "shape":[1]}}`, nil), []string{"invalid JSON", `"w"`}},
		{"trailing garbage", rawFile(`{}x`, nil), []string{"invalid JSON"}},
		{"two objects", rawFile(`{}{}`, nil), []string{"invalid JSON"}},
		{"unknown dtype", rawFile(obj(t("w", "F33", "[1]", "[0,4]")), make([]byte, 4)), []string{`"w"`, `unknown dtype "F33"`}},
		{"sub-byte dtype", rawFile(obj(t("w", "F4", "[2]", "[0,1]")), make([]byte, 1)), []string{`"w"`, `"F4"`, "not supported"}},
		{"dtype not a string", rawFile(`{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`"w"`}},
		{"size mismatch", rawFile(obj(t("w", "F32", "[2]", "[0,4]")), make([]byte, 8)), []string{`"w"`, "needs 8 bytes", "span 4"}},
		{"size mismatch bf16", rawFile(obj(t("w", "BF16", "[2,2]", "[0,4]")), make([]byte, 8)), []string{`"w"`, "needs 8 bytes"}},
		{"offsets beyond data", rawFile(obj(t("w", "F32", "[2]", "[0,8]")), make([]byte, 4)), []string{`"w"`, "outside the 4-byte data section"}},
		{"begin after end", rawFile(obj(t("w", "U8", "[0]", "[4,2]")), make([]byte, 4)), []string{`"w"`, "outside"}},
		{"negative offset", rawFile(obj(t("w", "U8", "[2]", "[-2,0]")), make([]byte, 4)), []string{`"w"`, "outside"}},
		{"offset overflows int64", rawFile(obj(t("w", "U8", "[2]", "[0,99999999999999999999]")), make([]byte, 4)), []string{`"w"`}},
		{"three offsets", rawFile(obj(t("w", "U8", "[2]", "[0,2,4]")), make([]byte, 4)), []string{`"w"`, "[begin, end]"}},
		{"one offset", rawFile(obj(t("w", "U8", "[2]", "[2]")), make([]byte, 4)), []string{`"w"`, "[begin, end]"}},
		{"overlap", rawFile(obj(t("x", "F32", "[2]", "[0,8]"), t("y", "F32", "[2]", "[4,12]")), make([]byte, 12)), []string{`"x"`, `"y"`, "overlap"}},
		{"identical ranges", rawFile(obj(t("x", "U8", "[4]", "[0,4]"), t("y", "I8", "[4]", "[0,4]")), make([]byte, 4)), []string{`"x"`, `"y"`, "overlap"}},
		{"negative dim", rawFile(obj(t("w", "F32", "[-1,2]", "[0,0]")), nil), []string{`"w"`, "negative dimension -1"}},
		{"fractional dim", rawFile(obj(t("w", "F32", "[1.5]", "[0,6]")), make([]byte, 6)), []string{`"w"`}},
		{"shape overflow", rawFile(obj(t("w", "F32", "[4294967296,4294967296]", "[0,0]")), nil), []string{`"w"`, "64 bits"}},
		{"shape bytes overflow", rawFile(obj(t("w", "F64", "[4611686018427387904]", "[0,0]")), nil), []string{`"w"`, "too large"}},
		{"duplicate key", rawFile(obj(t("w", "U8", "[1]", "[0,1]"), t("w", "U8", "[1]", "[1,2]")), make([]byte, 2)), []string{`"w"`, "twice"}},
		{"duplicate metadata", rawFile(`{"__metadata__":{},"__metadata__":{}}`, nil), []string{`"__metadata__"`, "twice"}},
		{"missing dtype", rawFile(`{"w":{"shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1)), []string{`"w"`, `missing "dtype"`}},
		{"missing shape", rawFile(`{"w":{"dtype":"U8","data_offsets":[0,1]}}`, make([]byte, 1)), []string{`"w"`, `missing "shape"`}},
		{"missing offsets", rawFile(`{"w":{"dtype":"U8","shape":[1]}}`, make([]byte, 1)), []string{`"w"`, `missing "data_offsets"`}},
		{"tensor not an object", rawFile(`{"w":[1,2]}`, nil), []string{`"w"`}},
		{"metadata not strings", rawFile(`{"__metadata__":{"step":10}}`, nil), []string{`"__metadata__"`, "string"}},
		{"metadata not an object", rawFile(`{"__metadata__":"x"}`, nil), []string{`"__metadata__"`}},
	}
}

func TestCorruptFiles(t *testing.T) {
	dir := t.TempDir()
	for i, c := range corruptCases() {
		t.Run(c.name, func(t *testing.T) {
			name := "corrupt" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".safetensors"
			p := writeBytes(t, dir, name, c.file)
			r, err := Open(p)
			if err == nil {
				r.Close()
			}
			wantErr(t, err, append([]string{p}, c.parts...)...)
			// The in-memory parser gives the same verdict.
			_, err = FromBytes("mem.safetensors", c.file)
			wantErr(t, err, append([]string{"mem.safetensors"}, c.parts...)...)
		})
	}
}

// TestLenientCoverage documents the choice to accept holes and trailing bytes
// in the data section (the reference implementation rejects both).
func TestLenientCoverage(t *testing.T) {
	hdr := `{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[5,7]},"z":{"dtype":"F32","shape":[0],"data_offsets":[1,1]}}`
	file := rawFile(hdr, []byte{1, 2, 0xee, 0xee, 0xee, 3, 4, 0xff, 0xff})
	p := writeBytes(t, t.TempDir(), "holes.safetensors", file)
	r := mustOpen(t, p)
	if b, _ := r.Raw("b"); string(b) != "\x03\x04" {
		t.Errorf("b = % x", b)
	}
	if z, err := r.F32("z"); err != nil || len(z) != 0 {
		t.Errorf("z = %v, %v", z, err)
	}
	pf, _ := parseHeader(p, file, int64(len(file)))
	if fullyCovered(pf.tensors, int64(len(file))-pf.dataStart) {
		t.Error("fullyCovered missed the holes")
	}
}

// TestHeaderWhitespace: the spec allows the header to be padded with spaces.
func TestHeaderWhitespace(t *testing.T) {
	file := rawFile(`  {"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}      `, []byte{7})
	r, err := FromBytes(filepath.Join("x", "pad.safetensors"), file)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := r.Raw("w"); b[0] != 7 {
		t.Errorf("w = %v", b)
	}
}
