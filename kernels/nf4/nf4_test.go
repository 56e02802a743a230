package nf4

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"math/rand"
	"os"
	"sort"
	"testing"
)

// golden is testdata/nf4_golden.json, written by tools/golden/nf4_ref.py:
// an independent numpy/scipy implementation from the QLoRA paper's
// definition (code table from normal quantiles, nearest-code argmin, double
// quantization with bitsandbytes' dynamic map built by torch).
type golden struct {
	CodeTable  []float64 `json:"code_table"`
	DynamicMap []float64 `json:"dynamic_map"`
	Cases      []struct {
		Name    string    `json:"name"`
		N       int       `json:"n"`
		Seed    uint64    `json:"seed"`
		Zero    bool      `json:"zero"`
		Packed  string    `json:"packed"`
		QAbsmax string    `json:"qabsmax"`
		Absmax2 []float64 `json:"absmax2"`
		Offset  float64   `json:"offset"`
		Dequant string    `json:"dequant"` // big-endian f32 bits, hex
	} `json:"cases"`
}

func readGolden(t *testing.T) golden {
	t.Helper()
	raw, err := os.ReadFile("testdata/nf4_golden.json")
	if err != nil {
		t.Fatalf("%v (regenerate with /usr/bin/python3 tools/golden/nf4_ref.py)", err)
	}
	var g golden
	if err := json.Unmarshal(raw, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

// hashInputs reproduces nf4_ref.py's inputs(): bf16 bit patterns from an
// integer hash, exponents 118..125 and an outlier (exponent 128) every 97.
func hashInputs(n int, seed uint64) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		h := (uint64(i)*2654435761 + seed) & 0xFFFFFFFF
		h = (h ^ h>>15) * 2246822519 & 0xFFFFFFFF
		h ^= h >> 13
		sign := h >> 31 & 1
		exp := 118 + (h>>16)&7
		if i%97 == 5 {
			exp = 128
		}
		out[i] = uint16(sign<<15 | exp<<7 | h&0x7F)
	}
	return out
}

// TestCodeTable compares Code with the table computed from the paper's
// definition in float64 (bitsandbytes rounds it through float32, hence the
// tolerance), and checks that the decision thresholds are the midpoints.
func TestCodeTable(t *testing.T) {
	g := readGolden(t)
	if len(g.CodeTable) != 16 {
		t.Fatalf("golden has %d codes", len(g.CodeTable))
	}
	for i, want := range g.CodeTable {
		if d := math.Abs(float64(Code[i]) - want); d > 1e-6 {
			t.Errorf("Code[%d] = %.9f, definition gives %.9f (diff %.2g)", i, Code[i], want, d)
		}
	}
	for i, th := range thresholds {
		mid := (float64(Code[i]) + float64(Code[i+1])) / 2
		if d := math.Abs(float64(th) - mid); d > 1e-7 {
			t.Errorf("threshold %d = %.9f, midpoint of codes %d,%d is %.9f", i, th, i, i+1, mid)
		}
	}
}

// TestDynamicMap: the 8-bit code of the scale quantization equals
// bitsandbytes' create_dynamic_map as torch computes it, bit for bit, and
// the definition computed here in float64 to float32 rounding (a few ulps:
// torch's float32 linspace, mean and scaling each round once).
func TestDynamicMap(t *testing.T) {
	g := readGolden(t)
	for i, want := range g.DynamicMap {
		if DynamicMap[i] != float32(want) {
			t.Errorf("DynamicMap[%d] = %.9g, bitsandbytes' map has %.9g", i, DynamicMap[i], want)
		}
	}
	def := []float64{0, 1}
	for i := 0; i < 7; i++ {
		n := 1<<i + 1
		for j := 0; j+1 < n; j++ {
			b0, b1 := 0.1+0.9*float64(j)/float64(n-1), 0.1+0.9*float64(j+1)/float64(n-1)
			v := (b0 + b1) / 2 * math.Pow(10, float64(i-6))
			def = append(def, v, -v)
		}
	}
	sort.Float64s(def)
	if len(def) != 256 {
		t.Fatalf("definition has %d values", len(def))
	}
	for i, want := range def {
		if d := math.Abs(float64(DynamicMap[i]) - want); d > 4e-7*math.Abs(want) {
			t.Errorf("DynamicMap[%d] = %.9g, definition %.12g (rel diff %.2g)", i, DynamicMap[i], want, d/math.Abs(want))
		}
	}
}

// TestQuantizeValue: ties at a threshold go to the lower code (the tree's
// x > t), the next float up to the higher one, and every value of a dense
// sweep maps to a nearest code.
func TestQuantizeValue(t *testing.T) {
	for i, th := range thresholds {
		if q := QuantizeValue(th); int(q) != i {
			t.Errorf("QuantizeValue(threshold %d) = %d, want %d", i, q, i)
		}
		if q := QuantizeValue(math.Nextafter32(th, 2)); int(q) != i+1 {
			t.Errorf("QuantizeValue(just above threshold %d) = %d, want %d", i, q, i+1)
		}
	}
	for x := float32(-1); x <= 1; x += 1.0 / 4096 {
		q := QuantizeValue(x)
		best := math.Inf(1)
		for _, c := range Code {
			best = math.Min(best, math.Abs(float64(x-c)))
		}
		if d := math.Abs(float64(x - Code[q])); d > best+1e-7 {
			t.Fatalf("QuantizeValue(%g) = %d (%g), a nearer code is %g away", x, q, Code[q], best)
		}
	}
	if q := QuantizeValue(float32(math.NaN())); q != 0 {
		t.Errorf("QuantizeValue(NaN) = %d, want 0 as bitsandbytes' tree", q)
	}
}

// TestGoldenRoundTrip: quantizing the hash inputs gives the reference's
// packed bytes (high nibble first), 8-bit scales, second-level scales and
// offset exactly, and dequantizes to its values bit for bit.
func TestGoldenRoundTrip(t *testing.T) {
	g := readGolden(t)
	for _, c := range g.Cases {
		src := hashInputs(c.N, c.Seed)
		if c.Zero {
			clear(src)
		}
		q := QuantizeBF16(src)
		if got := hex.EncodeToString(q.Packed); got != c.Packed {
			first := 0
			for first < len(got) && got[first] == c.Packed[first] {
				first++
			}
			t.Fatalf("%s: packed codes differ from the reference at byte %d", c.Name, first/2)
		}
		if got := hex.EncodeToString(q.QAbsmax); got != c.QAbsmax {
			t.Fatalf("%s: 8-bit scales differ:\n got %s\nwant %s", c.Name, got, c.QAbsmax)
		}
		if len(q.Absmax2) != len(c.Absmax2) {
			t.Fatalf("%s: %d second-level scales, want %d", c.Name, len(q.Absmax2), len(c.Absmax2))
		}
		for i, w := range c.Absmax2 {
			if q.Absmax2[i] != float32(w) {
				t.Errorf("%s: Absmax2[%d] = %g, want %g", c.Name, i, q.Absmax2[i], w)
			}
		}
		if q.Offset != float32(c.Offset) {
			t.Errorf("%s: offset %g, want %g", c.Name, q.Offset, c.Offset)
		}
		raw, _ := hex.DecodeString(c.Dequant)
		f := make([]float32, c.N)
		q.DequantizeF32(f, 0)
		h := make([]uint16, c.N)
		q.DequantizeBF16(h, 0)
		for i := range f {
			u := uint32(raw[4*i])<<24 | uint32(raw[4*i+1])<<16 | uint32(raw[4*i+2])<<8 | uint32(raw[4*i+3])
			want := math.Float32frombits(u)
			if f[i] != want || q.At(i) != want || h[i] != F32ToBF16(want) {
				t.Fatalf("%s: element %d dequantizes to %g (At %g, bf16 %#x), reference %g", c.Name, i, f[i], q.At(i), h[i], want)
			}
		}
	}
}

// TestDequantizeRanges: any sub-range (odd starts, across blocks) equals
// the same elements of a whole dequantization.
func TestDequantizeRanges(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	v := make([]float32, 1000)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	q := Quantize(v)
	all := make([]float32, len(v))
	q.DequantizeF32(all, 0)
	for _, s := range [][2]int{{0, 1}, {1, 2}, {63, 66}, {127, 128}, {5, 999}, {999, 1000}, {64, 128}} {
		f := make([]float32, s[1]-s[0])
		h := make([]uint16, s[1]-s[0])
		q.DequantizeF32(f, s[0])
		q.DequantizeBF16(h, s[0])
		for i := range f {
			if f[i] != all[s[0]+i] || h[i] != F32ToBF16(all[s[0]+i]) {
				t.Fatalf("range %v: element %d = %g / %#x, whole gives %g", s, s[0]+i, f[i], h[i], all[s[0]+i])
			}
		}
	}
}

// TestErrorBound: for every element, |x − deq(x)| ≤ g4·A + |A − Â| where A
// is the block's true absmax, Â its double-quantized value and g4 half the
// largest gap between adjacent NF4 codes; and |A − Â| ≤ g8·absmax2 with g8
// half the largest gap of the 8-bit map (plus float32 rounding).
func TestErrorBound(t *testing.T) {
	var g4, g8 float64
	for i := 0; i+1 < len(Code); i++ {
		g4 = math.Max(g4, float64(Code[i+1]-Code[i])/2)
	}
	for i := 0; i+1 < len(DynamicMap); i++ {
		g8 = math.Max(g8, float64(DynamicMap[i+1]-DynamicMap[i])/2)
	}
	r := rand.New(rand.NewSource(2))
	for _, scale := range []float64{1e-3, 0.02, 1, 300} {
		v := make([]float32, 64*700+37)
		for i := range v {
			v[i] = float32(r.NormFloat64() * scale * (1 + 4*float64(i%7/6))) // some blocks wider
		}
		q := Quantize(v)
		d := make([]float32, len(v))
		q.DequantizeF32(d, 0)
		for b := 0; b*BlockSize < len(v); b++ {
			blk := v[b*BlockSize : min((b+1)*BlockSize, len(v))]
			var a float64
			for _, x := range blk {
				a = math.Max(a, math.Abs(float64(x)))
			}
			ah := float64(q.Absmax(b))
			da := math.Abs(a - ah)
			if lim := g8*float64(q.Absmax2[b/ScaleBlockSize])*(1+1e-6) + 1e-6*a; da > lim {
				t.Fatalf("scale %g block %d: |A − Â| = %g > %g", scale, b, da, lim)
			}
			for i, x := range blk {
				e := math.Abs(float64(x) - float64(d[b*BlockSize+i]))
				if lim := g4*a + da + 1e-6*a; e > lim {
					t.Fatalf("scale %g element %d: |x − deq| = %g > %g (A=%g)", scale, b*BlockSize+i, e, lim, a)
				}
			}
		}
	}
}

func TestStorageBytes(t *testing.T) {
	for _, n := range []int{1, 63, 64, 65, 64 * 256, 64*256 + 1, 1 << 20} {
		q := Quantize(make([]float32, n))
		if q.Bytes() != StorageBytes(int64(n)) {
			t.Errorf("n=%d: Bytes %d, StorageBytes %d", n, q.Bytes(), StorageBytes(int64(n)))
		}
	}
}
