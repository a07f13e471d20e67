//go:build race

package btt

// raceTouch stores the byte at b[off] back from Go code before an atomic
// store to the word there. Under the race detector sync/atomic runs in the
// detector's C runtime, and a store that faults there (a page the
// filesystem cannot supply) kills the process: SetPanicOnFault only turns
// faults in Go code into panics. Touched from Go first, the store faults
// here instead. Every caller holds what serialises stores to the word (the
// map lock, or the lane for its flog), so the byte written back is the
// byte there; readers see the word unchanged, and the detector is told
// nothing of it (go:norace): it is not a store the program makes.
//
//go:norace
//go:noinline
func raceTouch(b []byte, off int) { b[off] ^= raceZero }

// raceZero is 0; the compiler cannot know that, so it keeps the store
// raceTouch makes (a byte stored back as it was loaded would be dropped).
var raceZero byte
