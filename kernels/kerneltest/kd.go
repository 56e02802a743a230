package kerneltest

import (
	"fmt"
	"math"
	"testing"

	"github.com/llamatune/llamatune/kernels"
)

// refKD is the distillation loss straight from its definition: explicit
// teacher and student distributions at temperature T, the divergence summed
// over them, KDWeight·T²·D + (1−KDWeight)·CE per counted position.
func refKD(h, w, hr, wr, th, tw []float64, ids []int32, lps []float64, labels []int32, a kernels.KDArgs) (total, kdSum, ceSum float64) {
	T, H, V, R, TH, K := a.Tokens, a.Hidden, a.Vocab, a.Rank, a.TeacherHidden, a.K
	temp, alpha, beta := float64(a.Temperature), float64(a.KDWeight), float64(a.Beta)
	softmax := func(z []float64, t float64) []float64 {
		m := math.Inf(-1)
		for _, x := range z {
			m = math.Max(m, x/t)
		}
		var s float64
		out := make([]float64, len(z))
		for i, x := range z {
			out[i] = math.Exp(x/t - m)
			s += out[i]
		}
		for i := range out {
			out[i] /= s
		}
		return out
	}
	for pos := 0; pos < T; pos++ {
		if labels[pos] == -100 {
			continue
		}
		zs := make([]float64, V)
		for j := 0; j < V; j++ {
			for d := 0; d < H; d++ {
				zs[j] += h[pos*H+d] * w[j*H+d]
			}
			for d := 0; d < R; d++ {
				zs[j] += hr[pos*R+d] * wr[j*R+d]
			}
		}
		ce := -math.Log(softmax(zs, 1)[labels[pos]])
		q := softmax(zs, temp)
		var P, Q []float64
		if TH > 0 {
			zt := make([]float64, V)
			for j := 0; j < V; j++ {
				for d := 0; d < TH; d++ {
					zt[j] += th[pos*TH+d] * tw[j*TH+d]
				}
			}
			P, Q = softmax(zt, temp), q
		} else {
			var pk, qk float64
			raw := make([]float64, 0, K+1)
			for i := 0; i < K; i++ {
				p := math.Exp(lps[pos*K+i])
				pk += p
				raw = append(raw, math.Log(p))
				Q = append(Q, q[ids[pos*K+i]])
				qk += q[ids[pos*K+i]]
			}
			if !a.Renorm {
				raw = append(raw, math.Log(math.Max(1-pk, 1e-12)))
				Q = append(Q, 1-qk)
			}
			P = softmax(raw, temp)
		}
		var D float64
		for b := range P {
			switch a.Kind {
			case kernels.ForwardKL:
				D += P[b] * math.Log(P[b]/Q[b])
			case kernels.ReverseKL:
				D += Q[b] * math.Log(Q[b]/P[b])
			case kernels.JSD:
				M := beta*P[b] + (1-beta)*Q[b]
				D += beta*P[b]*math.Log(P[b]/M) + (1-beta)*Q[b]*math.Log(Q[b]/M)
			}
		}
		total += alpha*temp*temp*D + (1-alpha)*ce
		kdSum += D
		ceSum += ce
	}
	return total, kdSum, ceSum
}

func testKD(t *testing.T, be kernels.Backend) {
	g := newGen(11)
	T, H, V, R, TH, K := 7, 6, 23, 2, 5, 4
	labels := []int32{3, -100, 22, 0, 5, 9, -100}
	type tc struct {
		name   string
		kind   kernels.KDKind
		dense  bool
		renorm bool
		rank   int
		temp   float32
	}
	var cases []tc
	for _, kind := range []kernels.KDKind{kernels.ForwardKL, kernels.ReverseKL, kernels.JSD} {
		cases = append(cases, tc{"dense", kind, true, false, 0, 2}, tc{"topk+tail", kind, false, false, R, 1.5})
	}
	cases = append(cases, tc{"topk renorm", kernels.ForwardKL, false, true, 0, 2}, tc{"dense T=1 lowrank", kernels.ForwardKL, true, false, R, 1})
	for _, comp := range computes {
		tolV, tolG := tols(comp)
		for _, c := range cases {
			name := fmt.Sprintf("%s kind=%d T=%g rank=%d compute %v", c.name, c.kind, c.temp, c.rank, comp)
			h, w := g.vec(T*H, 1.5, kernels.F32), g.vec(V*H, 1.5, kernels.F32)
			hr, wr := g.vec(T*R, 1, kernels.F32), g.vec(V*R, 1, kernels.F32)
			th, tw := g.vec(T*TH, 1.5, kernels.F32), g.vec(V*TH, 1.5, kernels.BF16)
			a := kernels.KDArgs{Tokens: T, Hidden: H, Vocab: V, Rank: c.rank, Kind: c.kind, Beta: 0.3,
				Temperature: c.temp, KDWeight: 0.7, Chunk: 3, GradScale: 0.5, Renorm: c.renorm, Compute: comp}
			bufs := kernels.KDBuffers{Student: kernels.CEBuffers{H: upload(be, kernels.F32, h), W: upload(be, kernels.F32, w),
				DH: be.Alloc(kernels.F32, T*H), DW: be.Alloc(kernels.F32, V*H)}}
			if c.rank > 0 {
				bufs.Student.HR, bufs.Student.WR = upload(be, kernels.F32, hr), upload(be, kernels.F32, wr)
				bufs.Student.DHR, bufs.Student.DWR = be.Alloc(kernels.F32, T*R), be.Alloc(kernels.F32, V*R)
			}
			var ids []int32
			var lps []float64
			if c.dense {
				a.TeacherHidden = TH
				bufs.TH, bufs.TW = upload(be, kernels.F32, th), upload(be, kernels.BF16, tw)
			} else {
				a.K = K
				// A teacher distribution over V; its top-k ids and log-probs.
				for pos := 0; pos < T; pos++ {
					logits := g.vec(V, 3, kernels.F32)
					var z float64
					for _, x := range logits {
						z += math.Exp(x)
					}
					used := map[int]bool{}
					for i := 0; i < K; i++ {
						best := -1
						for j := range logits {
							if !used[j] && (best < 0 || logits[j] > logits[best]) {
								best = j
							}
						}
						used[best] = true
						ids = append(ids, int32(best))
						lps = append(lps, float64(float32(logits[best]-math.Log(z))))
					}
				}
				bufs.TopKIDs, bufs.TopKLogProbs = ids, f32(lps)
			}
			rr := c.rank
			ref := func() (float64, float64, float64) {
				a2 := a
				a2.Rank = rr
				return refKD(h, w, hr, wr, th, tw, ids, lps, labels, a2)
			}
			kd, ce, n := be.LinearKD(bufs, labels, a)
			_, wantKD, wantCE := ref()
			if n != 5 {
				t.Errorf("%s: counted %d positions, want 5", name, n)
			}
			check(t, name+" kd sum", []float32{float32(kd)}, []float64{wantKD}, tolV)
			check(t, name+" ce sum", []float32{float32(ce)}, []float64{wantCE}, tolV)
			loss := func() float64 { l, _, _ := ref(); return 0.5 * l }
			check(t, name+" dh", be.ToF32(bufs.Student.DH), numGrad(h, loss), tolG)
			check(t, name+" dw", be.ToF32(bufs.Student.DW), numGrad(w, loss), tolG)
			if c.rank > 0 {
				check(t, name+" dhr", be.ToF32(bufs.Student.DHR), numGrad(hr, loss), tolG)
				check(t, name+" dwr", be.ToF32(bufs.Student.DWR), numGrad(wr, loss), tolG)
			}
		}
	}
}
