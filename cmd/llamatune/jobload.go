package main

import (
	"cmp"
	"errors"
	"fmt"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data/chat"
)

// modelChatTemplate is the model's own chat template (chat.LoadTemplate)
// when data.template is model, auto or unset; "" for a named template, or
// when auto finds none (the data pipeline then uses the tokenizer family's
// built-in one). A template that cannot be read is an error, not a silent
// fallback.
func modelChatTemplate(modelDir, template string) (string, error) {
	if template != "model" && template != "auto" && template != "" {
		return "", nil
	}
	t, _, err := chat.LoadTemplate(modelDir)
	if errors.Is(err, chat.ErrNoTemplate) && template != "model" {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("data.template %s: %w", cmp.Or(template, "auto"), err)
	}
	return t, nil
}

// loadJobWithOut loads the job of a command that writes into --out (which
// it requires).
func loadJobWithOut(command, jobPath string, sets []string, out string) (*configs.Job, error) {
	if out == "" {
		return nil, fmt.Errorf("%s: --out DIR is required", command)
	}
	return configs.Load(jobPath, sets)
}
