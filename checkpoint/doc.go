// Package checkpoint reads and writes model weights in the safetensors
// format, single-file or sharded the way Hugging Face transformers lays out a
// model directory, and in llama.cpp's GGUF.
//
// # Format
//
// A safetensors file is an 8-byte little-endian unsigned header length N, N
// bytes of JSON, then the data section:
//
//	{"__metadata__": {"format": "pt"},
//	 "model.norm.weight": {"dtype": "BF16", "shape": [4096], "data_offsets": [0, 8192]}, ...}
//
// data_offsets are [begin, end) byte offsets relative to the start of the
// data section, and end-begin must equal product(shape) * size(dtype). All
// values are little-endian.
//
// # Reading
//
// Open validates every header before returning: length prefix, the header
// length against the file size and MaxHeaderBytes, JSON syntax, duplicate
// keys, known whole-byte dtypes, non-negative dimensions, offsets inside the
// data section, size/offset agreement, and that no two tensors overlap. Each
// error names the file and, where there is one, the tensor.
//
// Holes: the reference implementation additionally requires the tensors to
// tile the data section exactly (no gaps, no trailing bytes). This reader
// deliberately accepts gaps and trailing bytes, because every tensor is still
// unambiguous and in bounds, and refusing would only stop a user from loading
// weights that are intact. Overlap is always rejected, since it means two
// tensors share bytes. The writers here always produce fully covered files
// (tested), so what llamatune writes satisfies the strict rule.
//
// Files are memory-mapped read-only on unix (golang.org/x/sys/unix) and read
// into memory elsewhere. Raw returns zero-copy slices into the mapping; F32
// and BF16 convert into new slices. Truncating a file while it is mapped can
// crash the process (SIGBUS); do not overwrite a checkpoint in place while it
// is open (the writers here replace files by rename, which is safe).
//
// A model directory is opened the way transformers does: model.safetensors
// if present, otherwise model.safetensors.index.json and its shards. Keys
// that appear in two shards, mapped shards that are missing, and mapped keys
// absent from their shard are errors. A tensor present in a shard but not in
// the weight_map is still served.
//
// # Writing
//
// Write, WriteFile and WriteSharded lay tensors out contiguously in the given
// order, pad the JSON header with spaces to a multiple of 8 bytes (so the
// data section is 8-byte aligned), and add "format": "pt" to __metadata__
// unless the caller sets "format", because transformers refuses files
// without it. Files are replaced atomically (temporary file, fsync, rename,
// directory fsync).
//
// # GGUF
//
// WriteGGUF writes llama.cpp's GGUF v3 (F32, F16, BF16 and Q8_0 tensors).
// OpenGGUF reads GGUF v2/v3: every metadata value type (arrays included)
// decodes to the Go types GGUFKV takes, and every tensor info is checked
// against the file (dimensions, block layout of its ggml type, alignment,
// bounds) before anything is returned, so a truncated or corrupt file is an
// error naming the file, never a panic (FuzzParseGGUF). GGUFFile.Reader
// shows chosen tensors as a Reader under other names, optionally with their
// rows reordered (llama's Q/K un-permutation), widening F32, F16, BF16 and
// Q8_0 to float32 or bfloat16; any other ggml type (Q4_K, Q6_K, ...) is an
// error naming the tensor, its type and the llama-quantize command that
// converts the file.
//
// bfloat16 and float16 conversions round to nearest, ties to even; see
// F32ToBF16 for the NaN and overflow rules.
package checkpoint
