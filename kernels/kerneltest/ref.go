package kerneltest

import "math"

// Naive float64 references. They follow the textbook formulas with plain loops
// (no chunking, no parallelism, no fused gradients) so that they share no code
// and no tricks with any backend. Gradients are checked against central
// differences of these functions, never against a backend's own backward.

func refMatMul(transA, transB bool, m, n, k int, a, b []float64) []float64 {
	c := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float64
				if transA {
					av = a[p*m+i]
				} else {
					av = a[i*k+p]
				}
				if transB {
					bv = b[j*k+p]
				} else {
					bv = b[p*n+j]
				}
				s += av * bv
			}
			c[i*n+j] = s
		}
	}
	return c
}

func refEmbedding(w []float64, ids []int32, dim int) []float64 {
	out := make([]float64, len(ids)*dim)
	for t, id := range ids {
		copy(out[t*dim:], w[int(id)*dim:(int(id)+1)*dim])
	}
	return out
}

func refRMSNorm(x, w []float64, rows, dim int, eps float64) []float64 {
	out := make([]float64, len(x))
	for i := 0; i < rows; i++ {
		var ss float64
		for j := 0; j < dim; j++ {
			ss += x[i*dim+j] * x[i*dim+j]
		}
		r := 1 / math.Sqrt(ss/float64(dim)+eps)
		for j := 0; j < dim; j++ {
			out[i*dim+j] = x[i*dim+j] * r * w[j]
		}
	}
	return out
}

func refRoPE(x []float64, pos []int32, tokens, heads, hd int, invFreq []float64) []float64 {
	out := make([]float64, len(x))
	half := hd / 2
	for t := 0; t < tokens; t++ {
		for h := 0; h < heads; h++ {
			base := (t*heads + h) * hd
			for d := 0; d < hd; d++ {
				// rotate_half(x) = cat(-x2, x1); out = x·cos + rotate_half(x)·sin
				th := float64(pos[t]) * invFreq[d%half]
				var rot float64
				if d < half {
					rot = -x[base+d+half]
				} else {
					rot = x[base+d-half]
				}
				out[base+d] = x[base+d]*math.Cos(th) + rot*math.Sin(th)
			}
		}
	}
	return out
}

func refSwiGLU(g, u []float64) []float64 {
	out := make([]float64, len(g))
	for i := range g {
		out[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
	}
	return out
}

// refAttention builds the full score matrix with an explicit mask.
func refAttention(q, k, v []float64, B, Tq, Tk, H, KV, hd, qoff int, scale float64, docStart []int32) []float64 {
	out := make([]float64, len(q))
	group := H / KV
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			kh := h / group
			for i := 0; i < Tq; i++ {
				qpos := qoff + i
				scores := make([]float64, Tk)
				allowed := make([]bool, Tk)
				m := math.Inf(-1)
				for j := 0; j < Tk; j++ {
					ok := j <= qpos
					if docStart != nil && j < int(docStart[b*Tk+qpos]) {
						ok = false
					}
					if !ok {
						continue
					}
					allowed[j] = true
					var s float64
					for d := 0; d < hd; d++ {
						s += q[((b*Tq+i)*H+h)*hd+d] * k[((b*Tk+j)*KV+kh)*hd+d]
					}
					scores[j] = s * scale
					m = math.Max(m, scores[j])
				}
				var z float64
				for j := range scores {
					if allowed[j] {
						scores[j] = math.Exp(scores[j] - m)
						z += scores[j]
					}
				}
				for j := range scores {
					if !allowed[j] {
						continue
					}
					for d := 0; d < hd; d++ {
						out[((b*Tq+i)*H+h)*hd+d] += scores[j] / z * v[((b*Tk+j)*KV+kh)*hd+d]
					}
				}
			}
		}
	}
	return out
}

// refCrossEntropy returns Σ over counted tokens of −log softmax(h·Wᵀ)[label].
func refCrossEntropy(h, w []float64, labels []int32, T, H, V int) (float64, int) {
	var sum float64
	n := 0
	for t := 0; t < T; t++ {
		if labels[t] == -100 {
			continue
		}
		z := make([]float64, V)
		m := math.Inf(-1)
		for j := 0; j < V; j++ {
			for d := 0; d < H; d++ {
				z[j] += h[t*H+d] * w[j*H+d]
			}
			m = math.Max(m, z[j])
		}
		var s float64
		for j := range z {
			s += math.Exp(z[j] - m)
		}
		sum += m + math.Log(s) - z[labels[t]]
		n++
	}
	return sum, n
}

// numGrad is the central-difference gradient of f with respect to x (f64).
func numGrad(x []float64, f func() float64) []float64 {
	g := make([]float64, len(x))
	for i := range x {
		h := 1e-5 * math.Max(1, math.Abs(x[i]))
		old := x[i]
		x[i] = old + h
		fp := f()
		x[i] = old - h
		fm := f()
		x[i] = old
		g[i] = (fp - fm) / (2 * h)
	}
	return g
}

func dot64(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}
