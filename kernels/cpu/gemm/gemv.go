package gemm

import "sync"

// Matrix-vector products (m == 1 or n == 1), e.g. one token through a linear
// layer during generation. Packing would read and write the whole matrix
// once more and the register tile would mostly multiply padding, so these go
// to dot-product / axpy loops that stream the matrix exactly once.
//
// With m == 1 the output is the row c[0:n]; with n == 1 it is the column
// c[i*ldc]. Up to transposition both reduce to y = alpha*M*x + beta*y where
// either the rows of M are contiguous (dot products, one per output) or its
// columns are (axpy updates over the rows of M, one per x value).

// gemv handles Sgemm calls with m == 1 or n == 1 (k > 0, alpha != 0).
func gemv(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	var (
		mat     []float32 // the matrix operand
		ld      int       // its row stride
		rowsDot bool      // true: out[i] = dot(mat row i, x); false: out += x[p]*mat row p
		x       []float32 // the vector operand, with stride incx
		incx    int
		out     int // number of outputs
		outRow  bool
	)
	if m == 1 {
		// c[0, j] = sum_p opA[0,p] * opB[p,j]
		x, incx = a, 1
		if transA {
			incx = lda
		}
		mat, ld, out, outRow = b, ldb, n, true
		rowsDot = transB // B stored n×k: row j is contiguous along p
	} else {
		// c[i, 0] = sum_p opA[i,p] * opB[p,0]
		x, incx = b, ldb
		if transB {
			incx = 1
		}
		mat, ld, out, outRow = a, lda, m, false
		rowsDot = !transA // A stored m×k: row i is contiguous along p
	}

	// Scratch: a contiguous copy of a strided x, and the out accumulators.
	buf := getVecBuf(k + out)
	defer putVecBuf(buf)
	xv := x[:k:k]
	if incx != 1 {
		xv = buf.s[:k]
		for p := range xv {
			xv[p] = x[p*incx]
		}
	}
	tmp := buf.s[k : k+out]

	// Workers split the outputs; each streams its share of the matrix.
	threads, done := workers(int64(out) * int64(k))
	defer done()
	chunk := roundUp(ceilDiv(out, threads), 16)
	work := func(o0, o1 int) {
		if rowsDot {
			for o := o0; o < o1; o++ {
				tmp[o] = dot(xv, mat[o*ld:o*ld+k])
			}
		} else {
			t := tmp[o0:o1]
			clear(t)
			for p, xp := range xv {
				axpy(xp, mat[p*ld+o0:p*ld+o1], t)
			}
		}
		// Merge into C: out = alpha*tmp + beta*out (beta == 0 overwrites).
		for o := o0; o < o1; o++ {
			idx := o
			if !outRow {
				idx = o * ldc
			}
			if beta == 0 {
				c[idx] = alpha * tmp[o]
			} else {
				c[idx] = alpha*tmp[o] + beta*c[idx]
			}
		}
	}
	if threads == 1 || chunk >= out {
		work(0, out)
		return
	}
	var wg sync.WaitGroup
	for o0 := chunk; o0 < out; o0 += chunk {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(o0, min(o0+chunk, out))
		}()
	}
	work(0, chunk)
	wg.Wait()
}

type vecBuf struct{ s []float32 }

var vecPool sync.Pool

func getVecBuf(n int) *vecBuf {
	if v := vecPool.Get(); v != nil {
		if b := v.(*vecBuf); cap(b.s) >= n {
			b.s = b.s[:n]
			return b
		}
	}
	return &vecBuf{s: make([]float32, n)}
}

func putVecBuf(b *vecBuf) { vecPool.Put(b) }

// dotGo returns sum_i x[i]*y[i] (len(y) >= len(x)), with four partial sums.
func dotGo(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// axpyGo computes y[i] += alpha*x[i] (len(y) >= len(x)).
func axpyGo(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += alpha * v
	}
}
