// Command nvblk serves a BTT disk on persistent memory to QEMU guests over
// vhost-user-blk, and formats, inspects, checks, reads and writes BTT images.
//
// This package only parses arguments and wires packages together.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Exit codes: 0 success, 1 failure (including an inconsistent check), 2 a
// usage error. Every failure prints one clear line on stderr.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	usage   string // arguments after the name
	run     func(env *environment, args []string) error
}

// environment is what a command may touch: standard streams and arguments.
type environment struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	stderrIsTTY    bool
}

// usageError is a wrong argument: exit 2 with the command's usage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

func main() {
	env := &environment{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, stderrIsTTY: isTerminal(os.Stderr)}
	os.Exit(run(env, os.Args[1:]))
}

func run(env *environment, args []string) int {
	if len(args) == 0 {
		printHelp(env.stderr)
		return exitUsage
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				printCommandHelp(env.stdout, c)
				return exitOK
			}
		}
		printHelp(env.stdout)
		return exitOK
	}
	c, ok := commands[name]
	if !ok && strings.HasPrefix(name, "-") {
		// The vhost-user backend program conventions: flags with no
		// subcommand mean serve.
		c, ok = commands["serve"], commands["serve"] != nil
		if ok {
			return finish(env, c, c.run(env, args))
		}
	}
	if !ok {
		fmt.Fprintf(env.stderr, "nvblk: unknown command %q (run 'nvblk --help')\n", name)
		return exitUsage
	}
	return finish(env, c, c.run(env, args[1:]))
}

func finish(env *environment, c *command, err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, errHelp) {
		printCommandHelp(env.stdout, c)
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "nvblk %s: %s\nusage: nvblk %s %s\n", c.name, ue.msg, c.name, c.usage)
		return exitUsage
	}
	var ce *checkFailed
	if errors.As(err, &ce) {
		return exitFailure // the report is already printed
	}
	fmt.Fprintf(env.stderr, "nvblk %s: %v\n", c.name, err)
	return exitFailure
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "nvblk: a vhost-user-blk backend serving a Linux-compatible BTT on persistent memory")
	fmt.Fprintln(w, "\nusage: nvblk COMMAND [arguments]   (nvblk help COMMAND for details)")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
}

func printCommandHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "usage: nvblk %s %s\n\n%s\n", c.name, c.usage, c.summary)
	fs := newFlagSet(c.name)
	if f, ok := flagSets[c.name]; ok {
		fs = f()
	}
	fs.SetOutput(w)
	fmt.Fprintln(w, "\nflags:")
	fs.PrintDefaults()
}
