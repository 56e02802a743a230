//go:build race

package distill_test

// raceEnabled: the race detector is on (-race), which slows training 5-10×; long
// learning tests run shrunk to the code paths they cover.
const raceEnabled = true
