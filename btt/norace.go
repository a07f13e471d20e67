//go:build !race

package btt

// raceTouch is a no-op outside race builds, where atomic stores fault in Go
// code and SetPanicOnFault catches them as they are (see race.go).
func raceTouch([]byte, int) {}
