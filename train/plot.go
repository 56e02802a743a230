package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// ReadMetrics reads RUN/metrics.jsonl.
func ReadMetrics(runDir string) ([]StepMetrics, error) {
	path := filepath.Join(runDir, "metrics.jsonl")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading metrics: %w (is %s a run directory?)", err, runDir)
	}
	defer f.Close()
	var out []StepMetrics
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue // runs before the skipped-step fix wrote those as blank lines
		}
		var m StepMetrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// Plot draws the training loss, its named parts (distillation's kd and ce,
// thin lines), the eval loss (dots) and the learning rate (right axis)
// against the step as a PNG, with axis titles and ticks. Steps on_nan: skip
// dropped have no loss: the loss line breaks there and a red tick under the
// axis marks them.
func Plot(metrics []StepMetrics, w io.Writer) error {
	const W, H, pad = 900, 500, 70
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	fill(img, img.Bounds(), color.White)
	var loss, eval, lr [][2]float64
	parts := map[string][][2]float64{}
	var skipped []float64
	maxStep := 1.0
	lo, hi, lrMax := math.Inf(1), math.Inf(-1), 0.0
	for _, m := range metrics {
		s := float64(m.Step)
		maxStep = math.Max(maxStep, s)
		if m.Skipped || bad(m.Loss) {
			skipped = append(skipped, s)
			loss = append(loss, [2]float64{s, math.NaN()}) // a gap in the line
		} else if m.Loss != 0 || m.LR != 0 {
			loss = append(loss, [2]float64{s, m.Loss})
			lo, hi = math.Min(lo, m.Loss), math.Max(hi, m.Loss)
			for k, v := range m.Parts {
				if !bad(v) {
					parts[k] = append(parts[k], [2]float64{s, v})
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
			}
		}
		if (m.Loss != 0 || m.LR != 0 || m.Skipped) && !bad(m.LR) {
			lr = append(lr, [2]float64{s, m.LR})
			lrMax = math.Max(lrMax, m.LR)
		}
		if m.EvalLoss != 0 && !bad(m.EvalLoss) {
			eval = append(eval, [2]float64{s, m.EvalLoss})
			lo, hi = math.Min(lo, m.EvalLoss), math.Max(hi, m.EvalLoss)
		}
	}
	if math.IsInf(lo, 1) {
		if len(skipped) > 0 {
			return fmt.Errorf("plot: every step in the metrics was skipped (non-finite loss): nothing to draw")
		}
		return fmt.Errorf("plot: no steps in the metrics")
	}
	if hi-lo < 1e-9 {
		hi, lo = hi+0.5, lo-0.5
	}
	x := func(s float64) int { return pad + int(s/maxStep*float64(W-2*pad)) }
	y := func(v, lo, hi float64) int { return H - pad - int((v-lo)/(hi-lo)*float64(H-2*pad)) }
	axis, grid := color.RGBA{80, 80, 80, 255}, color.RGBA{225, 225, 225, 255}
	blue, orange, green := color.RGBA{31, 119, 180, 255}, color.RGBA{255, 127, 14, 255}, color.RGBA{44, 160, 44, 255}

	// Ticks and grid: five on each axis.
	const ticks = 5
	for i := 0; i <= ticks; i++ {
		f := float64(i) / ticks
		yy := H - pad - int(f*float64(H-2*pad))
		line(img, pad, yy, W-pad, yy, grid)
		line(img, pad-5, yy, pad, yy, axis)
		text(img, 4, yy+4, fmt.Sprintf("%.3g", lo+f*(hi-lo)), axis)
		if lrMax > 0 {
			line(img, W-pad, yy, W-pad+5, yy, green)
			text(img, W-pad+8, yy+4, fmt.Sprintf("%.2g", f*lrMax), green)
		}
		xx := pad + int(f*float64(W-2*pad))
		line(img, xx, H-pad, xx, H-pad+5, axis)
		label := fmt.Sprintf("%d", int(math.Round(f*maxStep)))
		text(img, xx-len(label)*7/2, H-pad+18, label, axis)
	}
	line(img, pad, H-pad, W-pad, H-pad, axis)
	line(img, pad, pad, pad, H-pad, axis)
	line(img, W-pad, pad, W-pad, H-pad, axis)
	text(img, W/2-14, H-pad+38, "step", axis)
	text(img, 4, pad-10, "loss (nats/token)", axis)
	text(img, W-pad-60, pad-10, "learning rate", green)

	for i := 1; i < len(lr) && lrMax > 0; i++ {
		line(img, x(lr[i-1][0]), y(lr[i-1][1], 0, lrMax), x(lr[i][0]), y(lr[i][1], 0, lrMax), green)
	}
	partColors := []color.RGBA{{148, 103, 189, 255}, {140, 86, 75, 255}, {227, 119, 194, 255}, {127, 127, 127, 255}}
	legend := "loss (blue)"
	for i, k := range slices.Sorted(maps.Keys(parts)) {
		c, pts := partColors[i%len(partColors)], parts[k]
		for j := 1; j < len(pts); j++ {
			thinLine(img, x(pts[j-1][0]), y(pts[j-1][1], lo, hi), x(pts[j][0]), y(pts[j][1], lo, hi), c)
		}
		legend += fmt.Sprintf(", %s (%s)", k, [...]string{"purple", "brown", "pink", "grey"}[i%len(partColors)])
	}
	for i := 1; i < len(loss); i++ {
		if !math.IsNaN(loss[i-1][1]) && !math.IsNaN(loss[i][1]) {
			line(img, x(loss[i-1][0]), y(loss[i-1][1], lo, hi), x(loss[i][0]), y(loss[i][1], lo, hi), blue)
		}
	}
	red := color.RGBA{214, 39, 40, 255}
	for _, s := range skipped {
		fill(img, image.Rect(x(s)-1, H-pad+2, x(s)+2, H-pad+9), red)
	}
	for _, p := range eval {
		cx, cy := x(p[0]), y(p[1], lo, hi)
		fill(img, image.Rect(cx-3, cy-3, cx+4, cy+4), orange)
	}
	legend += ", eval loss (orange), learning rate (green, right axis)"
	if len(skipped) > 0 {
		legend += fmt.Sprintf(", %d skipped steps (red)", len(skipped))
	}
	text(img, pad, pad-30, legend, color.Black)
	return png.Encode(w, img)
}

// PlotRun writes RUN/loss.png from RUN/metrics.jsonl.
func PlotRun(runDir string) (string, error) {
	ms, err := ReadMetrics(runDir)
	if err != nil {
		return "", err
	}
	path := filepath.Join(runDir, "loss.png")
	// Drawn in memory and written atomically: metrics with no step leave
	// no file (nor an empty one), and a crash never leaves half a PNG.
	var buf bytes.Buffer
	if err := Plot(ms, &buf); err != nil {
		return "", fmt.Errorf("%w in %s; nothing written (train at least one step first)", err, filepath.Join(runDir, "metrics.jsonl"))
	}
	if err := writeFileAtomic(path, buf.Bytes()); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	r = r.Intersect(img.Bounds())
	for yy := r.Min.Y; yy < r.Max.Y; yy++ {
		for xx := r.Min.X; xx < r.Max.X; xx++ {
			img.Set(xx, yy, c)
		}
	}
}

// line draws with Bresenham's algorithm, 2 px thick.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) { bresenham(img, x0, y0, x1, y1, c, 2) }

// thinLine is line 1 px thick.
func thinLine(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	bresenham(img, x0, y0, x1, y1, c, 1)
}

func bresenham(img *image.RGBA, x0, y0, x1, y1 int, c color.Color, thick int) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		for t := range thick {
			img.Set(x0, y0+t, c)
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func abs(a int) int {
	if a < 0 {
		return -a
	}
	return a
}

func sign(a int) int {
	switch {
	case a < 0:
		return -1
	case a > 0:
		return 1
	}
	return 0
}
