// Package quickstart holds the built-in data of `llamatune quickstart`: a
// public-domain text sample and a generated instruction set, written out as
// JSONL so the quickstart runs the same job file path as any user job.
package quickstart

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

//go:embed assets/war-and-peace-40k.txt
var text string

// Text is the built-in War and Peace sample (40 kB).
func Text() string { return text }

// WriteData writes dir/text.jsonl (War and Peace paragraphs) and
// dir/chat.jsonl (short instruction conversations) and returns their paths.
func WriteData(dir string) (textPath, chatPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	var tb strings.Builder
	for _, para := range strings.Split(text, "\n\n") {
		para = strings.TrimSpace(para)
		if len(para) < 40 {
			continue
		}
		line, _ := json.Marshal(map[string]string{"text": para})
		tb.Write(append(line, '\n'))
	}
	textPath = filepath.Join(dir, "text.jsonl")
	if err := os.WriteFile(textPath, []byte(tb.String()), 0o644); err != nil {
		return "", "", err
	}
	var cb strings.Builder
	for _, conv := range Instructions(300, 1) {
		line, _ := json.Marshal(map[string]any{"messages": conv})
		cb.Write(append(line, '\n'))
	}
	chatPath = filepath.Join(dir, "chat.jsonl")
	if err := os.WriteFile(chatPath, []byte(cb.String()), 0o644); err != nil {
		return "", "", err
	}
	return textPath, chatPath, nil
}

type msg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

var (
	colors  = []string{"red", "green", "blue", "yellow", "black", "white"}
	animals = []string{"cat", "dog", "horse", "fox", "owl", "wolf"}
)

// Instructions generates n small, learnable conversations: arithmetic,
// counting words, and reversing a short list, with a fixed system prompt.
func Instructions(n int, seed uint64) [][]msg {
	r := rand.New(rand.NewPCG(seed, 77))
	sys := msg{"system", "You are a terse assistant. Answer in one sentence."}
	var out [][]msg
	for i := 0; i < n; i++ {
		var q, a string
		switch i % 3 {
		case 0:
			x, y := r.IntN(50), r.IntN(50)
			q, a = fmt.Sprintf("What is %d plus %d?", x, y), fmt.Sprintf("%d plus %d is %d.", x, y, x+y)
		case 1:
			c, an := colors[r.IntN(len(colors))], animals[r.IntN(len(animals))]
			q, a = fmt.Sprintf("What color is the %s %s?", c, an), fmt.Sprintf("The %s is %s.", an, c)
		default:
			k := 2 + r.IntN(3)
			words := make([]string, k)
			for j := range words {
				words[j] = animals[r.IntN(len(animals))]
			}
			rev := make([]string, k)
			for j := range words {
				rev[k-1-j] = words[j]
			}
			q, a = "Reverse: "+strings.Join(words, " "), strings.Join(rev, " ")+"."
		}
		out = append(out, []msg{sys, {"user", q}, {"assistant", a}})
	}
	return out
}
