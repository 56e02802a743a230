package cpu

import "github.com/llamatune/llamatune/kernels"

// ConcatCols: out[r] = [a[r] | b[r]]. Its VJP, SplitCols, routes each column
// block of dout back to its source: da += dout[:, :p], db += dout[:, p:].
func (*Backend) ConcatCols(a, b, out kernels.Buffer, rows, p, q int) {
	av, bv, o := asF32(a), asF32(b), F32(out)
	parallelFor(rows, 64, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			copy(o[r*(p+q):], av[r*p:(r+1)*p])
			copy(o[r*(p+q)+p:], bv[r*q:(r+1)*q])
		}
	})
}

func (*Backend) SplitCols(dout, da, db kernels.Buffer, rows, p, q int) {
	d := F32(dout)
	dav, dbv := F32(da), F32(db)
	parallelFor(rows, 64, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := d[r*(p+q) : (r+1)*(p+q)]
			if dav != nil {
				axpy(dav[r*p:(r+1)*p], row[:p], 1)
			}
			if dbv != nil {
				axpy(dbv[r*q:(r+1)*q], row[p:], 1)
			}
		}
	})
}
