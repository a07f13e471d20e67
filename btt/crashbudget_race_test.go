//go:build race

package btt_test

// Under the race detector the crash explorations, which are sequential and
// so give the detector nothing to find, run at a tenth of their speed:
// there they walk every third crash point with two images each, and
// `make test` runs them in full in a plain build as well.
const fullCrashExploration = false
