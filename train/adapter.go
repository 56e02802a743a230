package train

import "github.com/llamatune/llamatune/checkpoint"

// writeAdapter writes the LoRA (or DoRA) adapter as PEFT does
// (adapter_model.safetensors + adapter_config.json).
func writeAdapter(dir string, o Options) error {
	var ts []checkpoint.WriteTensor
	for _, p := range o.LoRA.Params() {
		ts = append(ts, checkpoint.WriteTensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: checkpoint.EncodeF32(p.F32())})
	}
	c := o.LoRA.Config
	cfg := checkpoint.NewAdapterConfig(o.Meta.BaseModel, c.R, c.Alpha, c.Dropout, o.LoRA.ModuleNames(), c.RSLoRA)
	cfg.UseDoRA = c.UseDoRA // the magnitude vectors are among Params, under PEFT's keys
	return checkpoint.WritePEFT(dir, cfg, ts)
}
