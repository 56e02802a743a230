package cpu

import (
	"testing"

	"github.com/llamatune/llamatune/kernels/kerneltest"
)

func TestConformance(t *testing.T) { kerneltest.Run(t, New()) }
