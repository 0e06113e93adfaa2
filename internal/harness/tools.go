package harness

// The client CLIs people point at registries (crane, skopeo, regctl), run against
// regcache; .ci/test installs them.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Tool finds a CLI on PATH or in GOPATH/bin, or skips the test naming how to install it.
func Tool(t testing.TB, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skipf("%s not installed (%s; bash .ci/test installs it)", name, install)
	return ""
}

// RunTool runs tool with args and env added to the test's environment, and returns its
// standard output (its standard error, where tools log retries and progress, is shown only
// when it fails); a failure fails the test.
func RunTool(t testing.TB, env []string, tool string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(tool), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}
