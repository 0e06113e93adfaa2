package main

// The command line: `regcache` (or `regcache serve`) runs the server with its flags,
// `regcache digest` asks for digests (digest.go), `regcache version` names the build.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"regcache/internal/version"
)

// Exit codes. The server keeps its one failure code (1) for every failure, flags and
// config included, as before subcommands existed; exitUsage is the subcommands'.
const (
	exitOK       = 0
	exitNotFound = 1 // digest: some image was not found or its lookup failed; serve: any failure
	exitUsage    = 2 // a subcommand's flags, arguments or config are wrong
)

const usageText = `usage:
  regcache [serve] [-config FILE] [-listen ADDR] [-log-level L] [-log-format F] [-access-log=BOOL] [-pprof ADDR]
  regcache digest [--server URL] [--config FILE] [--platform os/arch[/variant]] [--json] IMAGE...
  regcache version
`

// run runs the command line args (without the program name) and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	cmd, rest := "", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "", "serve":
		err := serve(rest)
		if errors.Is(err, flag.ErrHelp) {
			return exitOK // -h: the flags' usage is printed
		}
		if err != nil {
			fmt.Fprintln(stderr, "regcache:", err)
			return exitNotFound
		}
		return exitOK
	case "digest":
		return digestCommand(rest, stdout, stderr)
	case "version":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "regcache version: unexpected argument %q\n", rest[0])
			return exitUsage
		}
		fmt.Fprintln(stdout, version.String())
		return exitOK
	case "help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	default:
		fmt.Fprintf(stderr, "regcache: unknown command %q (commands: serve, digest, version)\n%s", cmd, usageText)
		return exitUsage
	}
}
