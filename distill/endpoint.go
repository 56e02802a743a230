package distill

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// endpoint checks an OpenAI-compatible server's base URL and model name and
// returns {base}/v1/{path} and the API key (apiKey, else $apiKeyEnv, default
// OPENAI_API_KEY). urlHint and nameHint say where the user sets them.
func endpoint(baseURL, model, apiKey, apiKeyEnv, path, urlHint, nameHint string) (url, key string, err error) {
	if baseURL == "" {
		return "", "", fmt.Errorf("teacher server: no URL; %s (e.g. http://localhost:8000/v1)", urlHint)
	}
	if !strings.HasPrefix(baseURL, "http://") && !strings.HasPrefix(baseURL, "https://") {
		return "", "", fmt.Errorf("teacher server: URL %q must start with http:// or https://", baseURL)
	}
	if model == "" {
		return "", "", errors.New("teacher server: no model name; " + nameHint + ", the name the server serves (GET /v1/models lists it)")
	}
	if apiKeyEnv == "" {
		apiKeyEnv = "OPENAI_API_KEY"
	}
	if apiKey == "" {
		apiKey = os.Getenv(apiKeyEnv)
	}
	base := strings.TrimRight(baseURL, "/")
	if !strings.HasSuffix(base, "/v1") {
		base += "/v1"
	}
	return base + "/" + path, apiKey, nil
}
