package benchmark

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"
)

// PeakRSS is the process's peak resident set size in bytes (VmHWM of
// /proc/self/status), or 0 where that file does not exist.
func PeakRSS() int64 { return procStatus("VmHWM:") }

// RSS is the process's resident set size now in bytes (VmRSS), or 0.
func RSS() int64 { return procStatus("VmRSS:") }

// AnonRSS is the anonymous part of RSS now (RssAnon: heap and stacks, not
// the pages of mapped files, which the kernel can drop), or 0.
func AnonRSS() int64 { return procStatus("RssAnon:") }

// anonPeak samples AnonRSS every interval until stop is called, which
// returns the largest value seen (the kernel keeps no high-water mark of
// anonymous memory alone).
func anonPeak(interval time.Duration) (stop func() int64) {
	done := make(chan struct{})
	result := make(chan int64)
	go func() {
		peak := AnonRSS()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				peak = max(peak, AnonRSS())
			case <-done:
				result <- max(peak, AnonRSS())
				return
			}
		}
	}()
	return func() int64 { close(done); return <-result }
}

func procStatus(key string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}
