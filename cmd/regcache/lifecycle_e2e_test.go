package main

// Lifecycle: the real binary's start-up refusals (one clear line, a non-zero exit), its
// graceful stop on SIGTERM (requests in flight finish, the process exits 0), and an
// in-process shutdown that leaves no goroutine behind.

import (
	"encoding/json"
	"errors"
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
	"go.uber.org/goleak"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// TestLifecycle runs the real binary: a config error is one clear line and a non-zero
// exit, a missing -config says so, and SIGTERM lets an in-flight request finish before
// the process exits 0.
func TestLifecycle(t *testing.T) {
	bin := harness.BuildBinary(t)
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
	p := harness.StartProcess(t, bin, harness.Config("", harness.Upstream("ghcr.io", reg.URL)))
	done := make(chan int, 1)
	go func() {
		client := &http.Client{Transport: &http.Transport{Proxy: nil}}
		resp, err := client.Get("http://" + p.Addr + "/v2/team/app/manifests/v1")
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	time.Sleep(300 * time.Millisecond) // the request is in flight, waiting on upstream
	start := time.Now()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if status := <-done; status != 200 {
		t.Fatalf("in-flight request during shutdown: %d, want 200", status)
	}
	select {
	case err := <-p.Exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("regcache did not exit within 20 s of SIGTERM")
	}
	t.Logf("drained and exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	if _, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		t.Fatal("still listening after exit")
	}
}

// TestShutdownLeavesNoGoroutines: after traffic that reaches upstream (manifests,
// a 404, a blob, a tags page) and a shutdown, no goroutine of regcache's is left, the
// upstream transports' idle connections included, checked while the upstream still runs
// (its closing them would hide a leak).
func TestShutdownLeavesNoGoroutines(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	var m struct {
		Config struct{ Digest string } `json:"config"`
	}
	if err := json.Unmarshal(pushed.Body, &m); err != nil {
		t.Fatal(err)
	}
	// Whatever runs already (other tests' leftovers, the upstream's server) is not ours.
	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		// fasthttp's process-wide Date header clock, started once and never stopped.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		// fasthttp's worker-pool cleaner notices Stop only after its current sleep
		// (MaxIdleWorkerDuration, 10 s): bounded, and not ours to shorten.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	}
	// A watch, too: its looks run on their own and end with the server (tag_ttl 50ms: one
	// is in flight or due at any moment).
	rc := startRegcacheWith(t, harness.Config("  tag_ttl: 50ms\n", harness.Upstream("reg.test", reg.URL))+
		harness.Block("watch", "- image: reg.test/team/app:v1", "- repository: reg.test/team/app", "  tags: '.*'"),
		harness.Options{Quiet: true})
	for _, p := range []string{
		"/v2/team/app/manifests/v1", "/v2/team/app/manifests/v1", "/v2/team/app/manifests/nope",
		"/v2/team/app/blobs/" + m.Config.Digest, "/v2/team/app/tags/list", "/metrics",
	} {
		rc.Do(t, http.MethodGet, p)
	}
	if reg.Count("GET", "token") == 0 {
		t.Fatal("upstream was never asked for a token: the test does not exercise auth")
	}
	rc.Stop(t)
	if err := goleak.Find(ignore...); err != nil {
		t.Fatalf("goroutines left after shutdown: %v", err)
	}
}
