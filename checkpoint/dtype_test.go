package checkpoint

import (
	"math"
	"testing"
)

func TestF32ToBF16Rounding(t *testing.T) {
	cases := []struct {
		name string
		in   uint32 // float32 bits
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"minus two", 0xc0000000, 0xc000},
		{"+0", 0x00000000, 0x0000},
		{"-0", 0x80000000, 0x8000},
		{"below half rounds down", 0x3f807fff, 0x3f80},
		{"above half rounds up", 0x3f808001, 0x3f81},
		{"tie to even stays (even)", 0x3f808000, 0x3f80},
		{"tie to even goes up (odd)", 0x3f818000, 0x3f82},
		{"negative tie to even", 0xbf818000, 0xbf82},
		{"carry into exponent", 0x3fffffff, 0x4000},
		{"+Inf", 0x7f800000, 0x7f80},
		{"-Inf", 0xff800000, 0xff80},
		{"max finite f32 overflows to Inf", 0x7f7fffff, 0x7f80},
		{"largest bf16 stays finite", 0x7f7f0000, 0x7f7f},
		{"tie just below overflow goes to Inf (odd)", 0x7f7f8000, 0x7f80},
		{"smallest subnormal f32 rounds to zero", 0x00000001, 0x0000},
		{"subnormal tie to even", 0x00018000, 0x0002},
		{"bf16 subnormal kept", 0x00010000, 0x0001},
		{"quiet NaN", 0x7fc00000, 0x7fc0},
		{"negative NaN keeps sign", 0xffc00000, 0xffc0},
		{"payload NaN keeps top payload", 0x7fa00000, 0x7fe0},
	}
	for _, c := range cases {
		got := F32ToBF16(math.Float32frombits(c.in))
		if got != c.want {
			t.Errorf("%s: F32ToBF16(%#08x) = %#04x, want %#04x", c.name, c.in, got, c.want)
		}
	}
}

func TestF32ToBF16NaNNeverInf(t *testing.T) {
	// Signalling NaNs whose payload is only in the low 16 bits would truncate
	// to Inf; they must stay NaN.
	for _, bits := range []uint32{0x7f800001, 0x7f80ffff, 0xff800001, 0x7fffffff, 0xffffffff, 0x7f808000} {
		h := F32ToBF16(math.Float32frombits(bits))
		if !math.IsNaN(float64(BF16ToF32(h))) {
			t.Errorf("F32ToBF16(%#08x) = %#04x, which is not NaN", bits, h)
		}
		if (h>>15 == 1) != (bits>>31 == 1) {
			t.Errorf("F32ToBF16(%#08x) = %#04x lost the sign", bits, h)
		}
	}
}

// TestF32ToBF16Exhaustive checks every bf16 value round-trips and that, for
// a sweep of float32 inputs, the result is the nearest bf16 with ties to even
// (compared against a float64 reference).
func TestF32ToBF16Exhaustive(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := BF16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if got := F32ToBF16(f); got != uint16(h) {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, got)
		}
	}
	for bits := uint32(0); bits < 0x7f800000; bits += 0x1235 {
		f := math.Float32frombits(bits)
		got := BF16ToF32(F32ToBF16(f))
		lo := math.Float32frombits(bits &^ 0xffff)
		hi := math.Float32frombits((bits &^ 0xffff) + 0x10000)
		hi64 := float64(hi)
		if math.IsInf(hi64, 1) {
			hi64 = math.Ldexp(1, 128) // the value bf16 rounding sees before overflowing to Inf
		}
		dl, dh := float64(f)-float64(lo), hi64-float64(f)
		var want float32
		switch {
		case dl < dh:
			want = lo
		case dh < dl:
			want = hi
		case (bits>>16)&1 == 0:
			want = lo
		default:
			want = hi
		}
		if got != want {
			t.Fatalf("F32ToBF16(%#08x): got %v, want %v", bits, got, want)
		}
	}
}

func TestF16Conversions(t *testing.T) {
	cases := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00},
		{-2, 0xc000},
		{65504, 0x7bff},
		{65520, 0x7c00}, // halfway to the next binade: ties to even -> Inf
		{float32(math.Inf(1)), 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{5.960464477539063e-08, 0x0001}, // smallest subnormal
		{1 + 1.0/2048, 0x3c00},          // tie between 1 and 1+2^-10: even is 1
		{1 + 3.0/2048, 0x3c02},          // tie, odd below: rounds up
	}
	for _, c := range cases {
		if got := F32ToF16(c.in); got != c.want {
			t.Errorf("F32ToF16(%v) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if !math.IsNaN(float64(F16ToF32(F32ToF16(float32(math.NaN()))))) {
		t.Error("F16 NaN did not survive")
	}
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if got := F32ToF16(f); got != uint16(h) {
			t.Fatalf("f16 %#04x -> %v -> %#04x", h, f, got)
		}
		// F16 -> BF16 goes through float32 once.
		if got, want := F16ToBF16(uint16(h)), F32ToBF16(f); got != want {
			t.Fatalf("F16ToBF16(%#04x) = %#04x, want %#04x", h, got, want)
		}
	}
}

func TestEncodeLittleEndian(t *testing.T) {
	got := EncodeF32([]float32{1, -2})
	want := []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0}
	if string(got) != string(want) {
		t.Errorf("EncodeF32 = % x, want % x", got, want)
	}
	if got := EncodeBF16([]uint16{0x3f80, 0x1234}); string(got) != string([]byte{0x80, 0x3f, 0x34, 0x12}) {
		t.Errorf("EncodeBF16 = % x", got)
	}
	if got := EncodeF32AsBF16([]float32{1, 3.140625}); string(got) != string([]byte{0x80, 0x3f, 0x49, 0x40}) {
		t.Errorf("EncodeF32AsBF16 = % x", got)
	}
	if got := EncodeF32AsF16([]float32{1, -2}); string(got) != string([]byte{0x00, 0x3c, 0x00, 0xc0}) {
		t.Errorf("EncodeF32AsF16 = % x", got)
	}
	if got := F32sToBF16([]float32{1, 2}); got[0] != 0x3f80 || got[1] != 0x4000 {
		t.Errorf("F32sToBF16 = %x", got)
	}
	if got := BF16sToF32([]uint16{0x3f80}); got[0] != 1 {
		t.Errorf("BF16sToF32 = %v", got)
	}
	if got := F16sToF32(F32sToF16([]float32{0.5})); got[0] != 0.5 {
		t.Errorf("F16 slice round trip = %v", got)
	}
}

func TestDTypeSize(t *testing.T) {
	want := map[string]int{"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1}
	for d, n := range want {
		if got, ok := DTypeSize(d); !ok || got != n {
			t.Errorf("DTypeSize(%s) = %d, %v; want %d", d, got, ok, n)
		}
	}
	if _, ok := DTypeSize("F4"); ok {
		t.Error("F4 should be unsupported")
	}
}
