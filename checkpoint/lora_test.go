package checkpoint

import (
	"math"
	"strings"
	"testing"
)

// The one check of LoRA settings names every bad one, and adapter_config.json
// reports them under its own key names.
func TestLoRASettings(t *testing.T) {
	bad := LoRASettings{R: 0, Alpha: math.Inf(1), Dropout: 1}
	var keys []string
	for _, p := range bad.Check() {
		keys = append(keys, p.Key)
	}
	if strings.Join(keys, ",") != "r,alpha,dropout,target_modules" {
		t.Fatalf("problems %v", bad.Check())
	}
	if ok := (LoRASettings{R: 8, Alpha: 16, TargetModules: []string{"q_proj"}}); len(ok.Check()) != 0 || ok.Scaling() != 2 {
		t.Fatalf("valid settings: %v, scaling %v", ok.Check(), ok.Scaling())
	}
	if s := (LoRASettings{R: 16, Alpha: 16, RSLoRA: true}).Scaling(); s != 4 {
		t.Fatalf("rsLoRA scaling %v, want alpha/sqrt(r) = 4", s)
	}
	err := AdapterConfig{PeftType: "LORA", R: 8, LoraAlpha: -1, LoraDropout: 0, TargetModules: []string{"q_proj"}}.Validate()
	if err == nil || !strings.Contains(err.Error(), "lora_alpha: must be > 0") {
		t.Fatalf("adapter_config.json names lora_alpha: %v", err)
	}
}
