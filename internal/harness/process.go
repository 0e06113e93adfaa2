package harness

// regcache as its own process, for the tests that need what only a process has: flags,
// exit codes, signals. Every other test starts it in process (instance.go).

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BuildBinary compiles the command in the test's own directory (cmd/regcache) and returns
// the path of the binary.
func BuildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "regcache")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// Process is a regcache binary running with a config of the test's.
type Process struct {
	Cmd *exec.Cmd
	// Addr is where it listens (127.0.0.1:port), as it logged.
	Addr string
	// Exited yields Cmd.Wait's result once the process has ended.
	Exited <-chan error
	// Logs holds every line it wrote to stderr (its log), complete once it has exited.
	Logs *Logs
}

// StartProcess runs bin with cfgYAML (written to a file) as its -config and args after it,
// and returns once it logs that it listens (within 20 s). It is killed when the test ends
// if it still runs.
func StartProcess(t testing.TB, bin, cfgYAML string, args ...string) *Process {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "regcache.yaml")
	if err := os.WriteFile(cfg, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return StartCommand(t, bin, append([]string{"-config", cfg}, args...)...)
}

// StartCommand runs bin with args as they are (`serve -config FILE`), and returns once it
// logs that it listens, as StartProcess does.
func StartCommand(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	listening := make(chan string, 1)
	logs := &Logs{}
	go func() {
		// The log is read to its end, so the process never blocks writing it; Wait comes
		// after the last read, as StderrPipe requires.
		lines := bufio.NewScanner(stderr)
		lines.Buffer(make([]byte, 64<<10), 1<<20)
		for lines.Scan() {
			_, _ = logs.Write(append(lines.Bytes(), '\n'))
			if addr, ok := Listening(lines.Text(), "regcache listening"); ok {
				listening <- addr
			}
		}
		exited <- cmd.Wait()
		close(listening)
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	p := &Process{Cmd: cmd, Exited: exited, Logs: logs}
	select {
	case addr, ok := <-listening:
		if !ok {
			t.Fatalf("regcache exited before it listened: %v", <-exited)
		}
		p.Addr = addr
	case <-time.After(20 * time.Second):
		t.Fatal("regcache did not log that it listens within 20 s")
	}
	return p
}
