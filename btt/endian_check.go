//go:build !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64 || wasm)

package btt

// The engine stores on-media little-endian words with native atomics.
var _ = "nvblk's btt needs a little-endian CPU" + 1
