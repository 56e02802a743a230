package cuda

// Launch geometry and chunk planning: pure host arithmetic, unit-tested
// without a GPU.

const (
	blockElementwise = 256
	maxGrid1D        = 65535 * 16 // grid-stride loops cover the rest
	attnTile         = 32         // KT in attention.cu
	attnWarps        = 8          // QW in attention.cu
	attnMaxHeadDim   = 256        // 32·MAXR in attention.cu
	defaultSharedMax = 48 << 10   // dynamic shared memory without opt-in
)

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// grid1D is the block count for a grid-stride kernel over n elements.
func grid1D(n int) uint32 {
	g := ceilDiv(n, blockElementwise)
	if g < 1 {
		g = 1
	}
	if g > maxGrid1D {
		g = maxGrid1D
	}
	return uint32(g)
}

// rowBlock is the block size of a one-block-per-row kernel over rows of
// width n: a multiple of 32 in [32, limit].
func rowBlock(n, limit int) int {
	b := ceilDiv(n, 32) * 32
	if b < 32 {
		b = 32
	}
	if b > limit {
		b = limit
	}
	return b
}

// rmsDWBands splits rows into bands for rmsnorm_bwd_dw: about 64 rows per
// band, at most 1024 bands. Returns the band count and rows per band.
func rmsDWBands(rows int) (bands, perBand int) {
	if rows <= 0 {
		return 0, 0
	}
	bands = min(1024, ceilDiv(rows, 64))
	perBand = ceilDiv(rows, bands)
	return ceilDiv(rows, perBand), perBand
}

// Dynamic shared memory (bytes) of the attention kernels for head dim hd.
func attnFwdShared(hd int) int  { return 4 * (attnTile*(hd+1) + attnTile*hd + attnWarps*hd) }
func attnDQShared(hd int) int   { return 4 * (2*attnTile*(hd+1) + 2*attnWarps*hd) }
func attnDKDVShared(hd int) int { return 4 * (2*attnTile*(hd+1) + 2*attnWarps*hd + 3*attnTile) }

// kdSparseShared is kd_rows' dynamic shared memory for a top-k teacher.
func kdSparseShared(k int) int { return 8*3*(k+1) + 4*2*k }

// span is a half-open range of token rows.
type span struct{ lo, hi int }

// chunks splits [0, tokens) into spans of at most chunk rows (def when
// chunk ≤ 0), as the CPU backend walks them.
func chunks(tokens, chunk, def int) []span {
	if chunk <= 0 {
		chunk = def
	}
	var out []span
	for c0 := 0; c0 < tokens; c0 += chunk {
		out = append(out, span{c0, min(c0+chunk, tokens)})
	}
	return out
}
