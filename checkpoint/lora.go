package checkpoint

import (
	"fmt"
	"math"
)

// LoRASettings are what every LoRA adapter is defined by, however it is
// written down: a job's lora section, lora.Config, or PEFT's
// adapter_config.json (r, lora_alpha, lora_dropout, target_modules,
// use_rslora). Check and Scaling are the one place their rules and PEFT's
// scaling formula are written.
type LoRASettings struct {
	R             int
	Alpha         float64
	Dropout       float64
	TargetModules []string
	RSLoRA        bool
}

// LoRAProblem is one invalid setting: Key names it as a job's lora section
// does (r, alpha, dropout, target_modules); callers that write it another
// way (adapter_config.json: lora_alpha) rename it.
type LoRAProblem struct{ Key, Msg string }

// Check reports every invalid setting: r ≥ 1, alpha positive and finite,
// dropout in [0, 1), at least one target module. Which module names are
// valid depends on the model, so the callers check those.
func (s LoRASettings) Check() []LoRAProblem {
	var ps []LoRAProblem
	if s.R < 1 {
		ps = append(ps, LoRAProblem{"r", fmt.Sprintf("must be >= 1, got %d; 8, 16 or 64 are usual", s.R)})
	}
	if !(s.Alpha > 0) || math.IsInf(s.Alpha, 0) {
		ps = append(ps, LoRAProblem{"alpha", fmt.Sprintf("must be > 0 and finite, got %v; 2·r is usual", s.Alpha)})
	}
	if !(s.Dropout >= 0 && s.Dropout < 1) {
		ps = append(ps, LoRAProblem{"dropout", fmt.Sprintf("must be in [0, 1), got %v", s.Dropout)})
	}
	if len(s.TargetModules) == 0 {
		ps = append(ps, LoRAProblem{"target_modules", "empty; list the modules to adapt (q_proj, v_proj, ...) or all-linear"})
	}
	return ps
}

// Scaling is the factor of the low-rank update B·A, as PEFT computes it:
// alpha/r, or alpha/√r with rsLoRA.
func (s LoRASettings) Scaling() float64 {
	if s.RSLoRA {
		return s.Alpha / math.Sqrt(float64(s.R))
	}
	return s.Alpha / float64(s.R)
}
