"""Reads the tokenizer.model llamatune writes for a GGUF Llama 2 base with the
sentencepiece library and compares its ids with the reference ids.

usage: python3 sentencepiece_check.py HF_EXPORT_DIR TEXT IDS_FILE
"""
import sys

import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1] + "/tokenizer.model")
text = open(sys.argv[2], encoding="utf-8").read()
ids = sp.encode(text, out_type=int)
want = [int(x) for x in open(sys.argv[3]).read().split()]
print("same ids" if ids == want else "DIFFERENT ids", len(ids), len(want),
      "bos", sp.bos_id(), "eos", sp.eos_id(), "unk", sp.unk_id(), "pad", sp.pad_id())
sys.exit(0 if ids == want else 1)
