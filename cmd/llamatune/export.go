package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/export"
)

func init() {
	var from, format, dtype, out, base, shard string
	var allowOtherBase bool
	cmd := &cobra.Command{
		Use:   "export --from DIR --format hf|peft|gguf|gguf-lora [--dtype F32|BF16|F16|Q8_0] --out PATH",
		Short: "Export fine-tuned weights as Hugging Face safetensors, a PEFT adapter, GGUF, or a GGUF LoRA adapter",
		Long: `Export what a training run produced.

--from takes a training checkpoint directory (state.json with a PEFT adapter for
LoRA, or trainable.safetensors / HF weights for full fine-tuning), a run directory (its newest
complete checkpoints/step-N/), a PEFT adapter directory
(adapter_config.json; the base model comes from --base or the adapter's
base_model_name_or_path), or an HF model directory of full weights.

Formats:
  hf    merged weights: model*.safetensors (+ index), config.json, tokenizer and
        generation config; --dtype F32, BF16 (default) or F16; --out is a directory
  peft  the LoRA adapter as PEFT writes it (LoRA checkpoints only); --out is a directory
  gguf  one GGUF v3 file for llama.cpp / Ollama; --dtype F32, F16 (default), BF16
        or Q8_0; --out is the .gguf file
  gguf-lora
        the LoRA adapter as a GGUF adapter file (LoRA checkpoints only), for
        llama.cpp's --lora on top of the base model's GGUF (export the base with
        --format gguf, or convert it with llama.cpp): no merge needed. --dtype F32
        (default), F16 or BF16; --out is the .gguf file. A LoRA on lm_head of a
        model with tied embeddings cannot be attached in llama.cpp: use gguf.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || out == "" {
				return fmt.Errorf("export: --from DIR and --out PATH are required")
			}
			switch strings.ToLower(format) {
			case "hf", "peft", "gguf", "gguf-lora":
			default:
				return fmt.Errorf("export: --format %q is not one of hf, peft, gguf, gguf-lora", format)
			}
			src, err := export.ResolveSourceWith(from, base, export.ResolveOptions{AllowOtherBase: allowOtherBase})
			if err != nil {
				return err
			}
			describe(src)
			t0 := time.Now()
			switch strings.ToLower(format) {
			case "hf":
				maxShard, err := parseSize(shard)
				if err != nil {
					return err
				}
				if dtype == "" {
					dtype = "BF16"
				}
				dtype = strings.ToUpper(dtype)
				err = export.HF(src, out, dtype, maxShard)
				if err != nil {
					return err
				}
			case "peft":
				if dtype != "" {
					return fmt.Errorf("export: --dtype does not apply to --format peft (the adapter keeps the dtype it was trained in)")
				}
				if err := export.PEFT(src, out); err != nil {
					return err
				}
			case "gguf":
				if err := export.GGUF(src, ggufOut(out, "model", &dtype, "F16"), dtype); err != nil {
					return err
				}
			case "gguf-lora":
				if err := export.GGUFLoRA(src, ggufOut(out, "adapter", &dtype, "F32"), dtype); err != nil {
					return err
				}
			default:
				return fmt.Errorf("export: --format %q is not one of hf, peft, gguf, gguf-lora", format)
			}
			fmt.Printf("wrote %s (%s", out, strings.ToLower(format))
			if dtype != "" {
				fmt.Printf(", %s", dtype)
			}
			fmt.Printf(") in %v\n", time.Since(t0).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "checkpoint, run, PEFT adapter or model directory")
	f.StringVar(&format, "format", "hf", "hf, peft, gguf or gguf-lora")
	f.StringVar(&dtype, "dtype", "", "hf: F32|BF16|F16 (default BF16); gguf: F32|F16|BF16|Q8_0 (default F16); gguf-lora: F32|F16|BF16 (default F32)")
	f.StringVar(&out, "out", "", "output directory (hf, peft) or .gguf file (gguf, gguf-lora)")
	f.StringVar(&base, "base", "", "base model directory (overrides the one recorded in the checkpoint or adapter)")
	f.BoolVar(&allowOtherBase, "allow-other-base", false, "merge into a --base other than the one the checkpoint was trained on (its fingerprint differs)")
	f.StringVar(&shard, "max-shard-size", "5GB", "hf: largest safetensors shard (e.g. 5GB, 500MB, 2GiB; 0 = one file)")
	rootCmd.AddCommand(cmd)
}

func describe(src export.Source) {
	switch {
	case src.AdapterDir != "":
		fmt.Printf("exporting LoRA adapter %s on base %s\n", src.AdapterDir, src.BaseDir)
	case src.WeightsDir != "":
		fmt.Printf("exporting weights %s\n", src.WeightsDir)
	}
}

// parseSize reads a byte size such as 5GB, 500MB, 2GiB or 1000000 (bytes).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("export: --max-shard-size %q is not a size like 5GB, 500MB or 2GiB", s)
	}
	return int64(v * float64(mult)), nil
}

// ggufOut settles a GGUF export's dtype (upper case, def when unset) and
// its file: out, or NAME-DTYPE.gguf inside out when out is a directory.
func ggufOut(out, name string, dtype *string, def string) string {
	*dtype = strings.ToUpper(cmp.Or(*dtype, def))
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		return filepath.Join(out, name+"-"+strings.ToLower(*dtype)+".gguf")
	}
	return out
}
