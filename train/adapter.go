package train

import (
	"encoding/json"
	"path/filepath"

	"github.com/llamatune/llamatune/checkpoint"
)

// writeAdapter writes the LoRA adapter as PEFT does.
func writeAdapter(dir string, o Options) error {
	var ts []checkpoint.WriteTensor
	for _, p := range o.LoRA.Params() {
		ts = append(ts, checkpoint.WriteTensor{Name: p.Name, DType: "F32", Shape: p.Shape, Data: checkpoint.EncodeF32(p.F32())})
	}
	if err := checkpoint.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	c := o.LoRA.Config
	cfg := map[string]any{"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": o.Meta.BaseModel,
		"r": c.R, "lora_alpha": c.Alpha, "lora_dropout": c.Dropout, "target_modules": c.TargetModules,
		"use_rslora": c.RSLoRA, "bias": "none", "fan_in_fan_out": false, "inference_mode": true}
	raw, _ := json.MarshalIndent(cfg, "", "  ")
	return writeFileAtomic(filepath.Join(dir, "adapter_config.json"), raw)
}
