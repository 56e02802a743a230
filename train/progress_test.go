package train

import (
	"bytes"
	"encoding/json"
	"image/color"
	"image/png"
	"math"
	"strings"
	"testing"
	"time"
)

// After a resume the ETA is this process's rate times the steps left, not
// the elapsed time spread over every step of the run.
func TestProgressETAAfterResume(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, false, 10)
	p.resumed(5)
	p.start = time.Now().Add(-10 * time.Second) // one step in 10 s
	p.step(StepMetrics{Step: 6})
	if !strings.Contains(b.String(), "eta 40s") {
		t.Fatalf("want eta 40s (4 steps left at 10 s each): %q", b.String())
	}
}

// A loss with named parts (distillation's kd and ce): the progress line
// shows them beside the total, metrics.jsonl carries them (null where not
// finite) and the plot draws each part's line.
func TestLossPartsShown(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out, false, 2)
	p.step(StepMetrics{Step: 1, Loss: 1.4, Parts: LossParts{"kd": 0.9, "ce": 7.2}})
	if !strings.Contains(out.String(), "loss 1.4000 (ce 7.2000 kd 0.9000) lr") {
		t.Fatalf("progress line: %q", out.String())
	}
	line, err := json.Marshal(StepMetrics{Step: 1, Loss: 1.4, Parts: LossParts{"kd": math.NaN(), "ce": 7.2}})
	if err != nil || !strings.Contains(string(line), `"loss_parts":{"ce":7.2,"kd":null}`) {
		t.Fatalf("metrics line %s, %v", line, err)
	}
	partColor := color.RGBA{148, 103, 189, 255} // the first part's line
	drawn := func(parts LossParts) bool {
		var ms []StepMetrics
		for s := 1; s <= 5; s++ {
			ms = append(ms, StepMetrics{Step: s, Loss: 3 - 0.1*float64(s), LR: 1e-4, Parts: parts})
		}
		var buf bytes.Buffer
		if err := Plot(ms, &buf); err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(&buf)
		if err != nil {
			t.Fatal(err)
		}
		for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
			for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
				if color.RGBAModel.Convert(img.At(x, y)) == partColor {
					return true
				}
			}
		}
		return false
	}
	if !drawn(LossParts{"ce": 2, "kd": 1}) || drawn(nil) {
		t.Fatal("the plot should draw a line per loss part, and none without parts")
	}
}
