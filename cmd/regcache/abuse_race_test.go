//go:build race

package main

// abRace: the race detector slows every request about fourfold; the longest abuse tests
// scale their counts down under it.
const abRace = true
