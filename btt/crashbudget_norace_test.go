//go:build !race

package btt_test

// See crashbudget_race_test.go.
const fullCrashExploration = true
