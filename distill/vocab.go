package distill

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/llamatune/llamatune/data/tokenizer"
)

// VocabHash is a stable identity of the tokenizer in modelDir: the SHA-256 of
// every id's token text in id order (special and added tokens included), each
// length-prefixed, as "sha256:<hex>". Models that share a vocabulary hash equal
// whatever their size — Llama 3.1 8B/70B/405B and Llama 3.2 1B/3B (128,256
// tokens) — while Llama 2 and Llama 3 differ.
func VocabHash(modelDir string) (string, error) {
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		return "", fmt.Errorf("vocabulary hash of %s: %w", modelDir, err)
	}
	return TokenizerHash(tok), nil
}

// TokenizerHash is VocabHash of an already loaded tokenizer.
func TokenizerHash(tok tokenizer.Tokenizer) string {
	h := sha256.New()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(tok.VocabSize()))
	h.Write(n[:])
	for id := 0; id < tok.VocabSize(); id++ {
		s := tok.IDToken(id)
		binary.LittleEndian.PutUint32(n[:4], uint32(len(s)))
		h.Write(n[:4])
		h.Write([]byte(s))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// CheckVocab refuses a teacher whose vocabulary differs from the student's:
// logit distillation compares distributions id by id, which only means
// something when both models share one tokenizer. (Cross-tokenizer
// distillation, ULDLoss, aligns the two tokenizations instead and skips it.)
func CheckVocab(teacher, student Info) error {
	if teacher.VocabHash != "" && teacher.VocabHash == student.VocabHash &&
		(teacher.VocabSize == 0 || student.VocabSize == 0 || teacher.VocabSize == student.VocabSize) {
		return nil
	}
	why := "their tokenizers differ"
	switch {
	case teacher.VocabHash == "" || student.VocabHash == "":
		why = "a vocabulary hash is missing"
	case teacher.VocabHash == student.VocabHash:
		why = "their vocabulary sizes differ"
	}
	return fmt.Errorf("teacher %q (vocab %d, hash %s) and student %q (vocab %d, hash %s) do not share a vocabulary (%s): "+
		"logit knowledge distillation compares next-token distributions id by id, so teacher and student must use the same tokenizer — "+
		"pick a teacher of the same family (e.g. Llama 3.1 405B/70B/8B for a Llama 3.2 1B/3B student), "+
		"or set distill.cross_tokenizer: uld to align the two tokenizations instead (an in-process teacher, or a server with distill.teacher.tokenizer and temperature 1)",
		teacher.Name, teacher.VocabSize, orNone(teacher.VocabHash), student.Name, student.VocabSize, orNone(student.VocabHash), why)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
