package train

import (
	"fmt"
	"io"
)

// reportData prints what the training data did not give as written (rows skipped under
// bad_rows: skip, documents dropped by truncation: drop) when the batches can say
// (data.Pipeline.Report); nothing when all of it was trained.
func reportData(w io.Writer, b Batches) {
	if r, ok := b.(interface{ Report() string }); ok {
		if s := r.Report(); s != "" {
			fmt.Fprintln(w, s)
		}
	}
}
