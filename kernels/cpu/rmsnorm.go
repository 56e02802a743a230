package cpu

import (
	"math"

	"github.com/llamatune/llamatune/kernels"
)

// RMSNorm over rows of x [rows,dim]:
//
//	r   = 1/sqrt(mean(x²)+eps)          (saved per row)
//	out = x · r · w
//
// Backward, with g = dout·w:
//
//	dx = r·g − x · r³/dim · Σ(g·x)
//	dw += Σ_rows dout · x · r
func (*Backend) RMSNorm(x, w, out, rstd kernels.Buffer, rows, dim int, eps float32) {
	xv, wv, ov := F32(x), asF32(w), F32(out)
	var rs []float32
	if rstd != nil {
		rs = F32(rstd)
	}
	parallelFor(rows, 16, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			row := xv[i*dim : (i+1)*dim]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			r := float32(1 / math.Sqrt(ss/float64(dim)+float64(eps)))
			if rs != nil {
				rs[i] = r
			}
			o := ov[i*dim : (i+1)*dim]
			for j, v := range row {
				o[j] = v * r * wv[j]
			}
		}
	})
}

func (*Backend) RMSNormBackward(dout, x, w, rstd, dx, dw kernels.Buffer, rows, dim int) {
	dov, xv, wv, rs := F32(dout), F32(x), asF32(w), F32(rstd)
	var dxv []float32
	if dx != nil {
		dxv = F32(dx)
		parallelFor(rows, 16, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				d, xr := dov[i*dim:(i+1)*dim], xv[i*dim:(i+1)*dim]
				r := rs[i]
				var dot float64
				for j := range d {
					dot += float64(d[j]) * float64(wv[j]) * float64(xr[j])
				}
				c := float32(dot) * r * r * r / float32(dim)
				o := dxv[i*dim : (i+1)*dim]
				for j := range d {
					o[j] += r*d[j]*wv[j] - xr[j]*c
				}
			}
		})
	}
	if dw != nil {
		dwv := F32(dw)
		parallelFor(dim, 64, func(lo, hi int) {
			for i := 0; i < rows; i++ {
				r := rs[i]
				d, xr := dov[i*dim:(i+1)*dim], xv[i*dim:(i+1)*dim]
				for j := lo; j < hi; j++ {
					dwv[j] += d[j] * xr[j] * r
				}
			}
		})
	}
}
