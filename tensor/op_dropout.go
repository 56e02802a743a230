package tensor

import (
	"math"
	"math/rand/v2"
	"runtime"
	"sync"

	"github.com/llamatune/llamatune/kernels"
)

// Dropout zeroes each element with probability p and scales the rest by
// 1/(1−p) (inverted dropout, as torch.nn.Dropout in training). The mask comes
// from seed alone, so re-running the op (activation recomputation) draws the
// same mask. dx = mask·dy/(1−p).
//
// The mask is drawn in chunks of maskChunk elements, chunk c from its own
// PCG stream (seed, c), two 32-bit draws per 64-bit output (an element is
// dropped when its draw is below p·2³², so p is honoured to 2⁻³²): the
// chunks are filled in parallel and the mask does not depend on the
// number of threads.
//
// On an Inference tape (evaluation, generation) it is the identity, as
// dropout in torch's eval mode.
func (tp *Tape) Dropout(x *Tensor, p float64, seed uint64) *Tensor {
	if p <= 0 || tp.Inference {
		return x
	}
	if p >= 1 {
		panic("tensor.Dropout: p must be < 1")
	}
	n := x.Numel()
	mask := dropoutMask(n, p, seed)
	m := tp.be.FromF32(kernels.F32, mask) // exact 1/(1−p) whatever x's dtype
	tp.owned = append(tp.owned, m)
	y := tp.result(tp.alloc(n), x.Shape, x)
	tp.be.Copy(y.Buf, x.Buf)
	tp.be.Mul(y.Buf, m)
	if y.requiresGrad {
		tp.record(func() {
			tmp := tp.be.Alloc(y.Grad.DType(), n)
			tp.be.Copy(tmp, y.Grad)
			tp.be.Mul(tmp, m)
			tp.be.AddScaled(x.grad(), tmp, 1)
			tp.be.Free(tmp)
		}, y)
	}
	return y
}

// maskChunk is the elements of a dropout mask drawn from one PCG stream.
const maskChunk = 1 << 14

// dropoutMask is Dropout's mask: 0 with probability p, else 1/(1−p).
func dropoutMask(n int, p float64, seed uint64) []float32 {
	mask := make([]float32, n)
	keep := float32(1 / (1 - p))
	below := uint32(min(math.Round(p*(1<<32)), math.MaxUint32)) // dropped when draw < below
	chunks := (n + maskChunk - 1) / maskChunk
	workers := min(runtime.GOMAXPROCS(0), chunks)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := w; c < chunks; c += workers {
				r := rand.NewPCG(seed, 0xd50^uint64(c)<<20)
				m := mask[c*maskChunk : min((c+1)*maskChunk, n)]
				for i := 0; i < len(m); i += 2 {
					v := r.Uint64()
					if uint32(v) >= below {
						m[i] = keep
					}
					if i+1 < len(m) && uint32(v>>32) >= below {
						m[i+1] = keep
					}
				}
			}
		}()
	}
	wg.Wait()
	return mask
}
