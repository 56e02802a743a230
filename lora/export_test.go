package lora

// DropoutSeed is the seed of l's dropout mask in the next forward pass (tests
// rebuild the mask to check DoRA's dropout form against its definition).
func DropoutSeed(l *Linear) uint64 { return l.set.dropoutSeed(l.Module) }
