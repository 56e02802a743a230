package cpu

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Embedding gathers rows: out[t,:] = w[ids[t],:] (w [vocab,dim], out [T,dim]).
// Backward is the scatter-add dw[ids[t],:] += dout[t,:].
func (*Backend) Embedding(w kernels.Buffer, ids []int32, out kernels.Buffer, dim int) {
	o := F32(out)
	vocab := w.Len() / dim
	cb := w.(*Buffer)
	parallelFor(len(ids), 64, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			id := int(ids[t])
			if id < 0 || id >= vocab {
				panic(fmt.Sprintf("cpu.Embedding: token id %d at position %d outside vocab %d", id, t, vocab))
			}
			dst := o[t*dim : (t+1)*dim]
			if cb.dt == kernels.F32 {
				copy(dst, cb.f32[id*dim:(id+1)*dim])
			} else {
				for j, h := range cb.bf16[id*dim : (id+1)*dim] {
					dst[j] = kernels.BF16ToF32(h)
				}
			}
		}
	})
}

func (*Backend) EmbeddingBackward(dout kernels.Buffer, ids []int32, dw kernels.Buffer, dim int) {
	d, g := F32(dout), F32(dw)
	// Sequential: the same id may appear many times, and T·dim is small next to a GEMM.
	for t, id := range ids {
		row := g[int(id)*dim : (int(id)+1)*dim]
		for j, v := range d[t*dim : (t+1)*dim] {
			row[j] += v
		}
	}
}
