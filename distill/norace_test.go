//go:build !race

package distill_test

// raceEnabled: the race detector is on (-race).
const raceEnabled = false
