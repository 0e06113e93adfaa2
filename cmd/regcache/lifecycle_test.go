package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream/registrytest"
)

// buildBinary compiles regcache once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "regcache")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestLifecycle runs the real binary: a config error is one clear line and a non-zero
// exit, a missing -config says so, and SIGTERM lets an in-flight request finish before
// the process exits 0.
func TestLifecycle(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()

	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("listen: 127.0.0.1:0\ncache:\n  tag_tll: 60s\n"), 0o644)
	metrics := filepath.Join(dir, "metrics.yaml")
	_ = os.WriteFile(metrics, []byte("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:9091\nupstreams:\n  - name: docker.io\n    url: https://registry-1.docker.io\n"), 0o644)
	for name, args := range map[string][]string{
		"unknown key":    {"-config", bad},
		"missing config": {"-config", filepath.Join(dir, "nope.yaml")},
		"bad flag":       {"-log-level", "loud"},
		// -listen is applied after the file is checked: it is checked against metrics_listen too.
		"listen on metrics port": {"-config", metrics, "-listen", "127.0.0.1:9091"},
	} {
		cmd := exec.Command(bin, args...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("%s: exit %v, want non-zero", name, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "regcache: ") {
			t.Fatalf("%s: want one line starting 'regcache: ', got:\n%s", name, out)
		}
		want := map[string]string{"unknown key": "cache.tag_tll", "missing config": "does not exist", "bad flag": "-log-level",
			"listen on metrics port": "metrics_listen"}[name]
		if !strings.Contains(lines[0], want) {
			t.Fatalf("%s: %q does not mention %q", name, lines[0], want)
		}
	}

	// Graceful stop: a request that waits 1.5 s on upstream still gets its answer.
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.SetFault(registrytest.OnManifests(registrytest.Delay(1500 * time.Millisecond)))
	addr := freePort(t)
	cfg := filepath.Join(dir, "ok.yaml")
	_ = os.WriteFile(cfg, []byte(fmt.Sprintf("listen: %s\ndefault_upstream: ghcr.io\nupstreams:\n  - name: ghcr.io\n    url: %s\n", addr, reg.URL)), 0o644)
	cmd := exec.Command(bin, "-config", cfg)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	logs := bufio.NewScanner(stderr)
	for logs.Scan() && !strings.Contains(logs.Text(), "listening") {
	}
	go func() {
		for logs.Scan() {
		}
	}()
	done := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/v2/team/app/manifests/v1")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	time.Sleep(300 * time.Millisecond) // the request is in flight, waiting on upstream
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if status := <-done; status != 200 {
		t.Fatalf("in-flight request during shutdown: %d, want 200", status)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("regcache did not exit within 20 s of SIGTERM")
	}
	t.Logf("drained and exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still listening after exit")
	}
}
