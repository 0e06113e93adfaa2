package main

// The access log: one JSON line per request, naming the upstream, repository and
// reference of a routed request and where the answer came from.

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

func TestAccessLogOneLinePerRequest(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rc := startRegcache(t, harness.Config("", harness.Upstream("registry.test", reg.URL, "aliases: [rt]")))

	type want struct {
		method, path        string
		status              int
		upstream, repo, ref string // "" when the request was refused before routing
		cache               string // "" when no answer came from the cache
	}
	wants := []want{
		{"GET", "/v2/", 401, "", "", "", ""}, // the ping without Authorization is challenged
		{"GET", "/v2/team/app/manifests/v1", 200, "registry.test", "team/app", "v1", "MISS"},
		{"HEAD", "/v2/rt/team/app/manifests/v1", 200, "registry.test", "team/app", "v1", "HIT"},
		{"GET", "/v2/team/app/manifests/" + pushed.Digest, 200, "registry.test", "team/app", pushed.Digest, "HIT"},
		{"GET", "/v2/team/app/manifests/missing", 404, "registry.test", "team/app", "missing", ""},
		{"GET", "/v2/evil.example.com/x/manifests/v1", 404, "", "", "", ""},
		{"GET", "/v2/BAD/manifests/v1", 400, "", "", "", ""},
		{"DELETE", "/v2/team/app/manifests/v1", 405, "", "", "", ""},
	}
	for _, w := range wants {
		if r := rc.Do(t, w.method, w.path); r.Status != w.status {
			t.Fatalf("%s %s: %d, want %d", w.method, w.path, r.Status, w.status)
		}
	}
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(rc.Logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	if len(lines) != len(wants) {
		t.Fatalf("%d request lines for %d requests:\n%s", len(lines), len(wants), rc.Logs.String())
	}
	for i, w := range wants {
		m := lines[i]
		if m["method"] != w.method || m["status"] != float64(w.status) {
			t.Errorf("line %d: method %v status %v, want %s %d", i, m["method"], m["status"], w.method, w.status)
		}
		if d, ok := m["duration"].(float64); !ok || d < 0 {
			t.Errorf("line %d: duration %v", i, m["duration"])
		}
		if w.upstream != "" && (m["upstream"] != w.upstream || m["repository"] != w.repo || m["reference"] != w.ref) {
			t.Errorf("line %d: %v, want upstream %s repository %s reference %s", i, m, w.upstream, w.repo, w.ref)
		}
		if w.upstream == "" && m["upstream"] != nil {
			t.Errorf("line %d: an unrouted request names upstream %v", i, m["upstream"])
		}
		if got, ok := m["cache"]; (w.cache == "" && ok) || (w.cache != "" && got != w.cache) {
			t.Errorf("line %d: cache %v, want %q", i, got, w.cache)
		}
		if m["path"] != strings.SplitN(w.path, "?", 2)[0] {
			t.Errorf("line %d: path %v", i, m["path"])
		}
	}
}

// The access log is buffered, and SIGTERM loses none of it: N requests answered, then
// SIGTERM, then N request lines in the process's log, each one JSON.
func TestAccessLogNoLineLostOnSIGTERM(t *testing.T) {
	t.Parallel()
	bin := harness.BuildBinary(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	p := harness.StartProcess(t, bin, harness.Config("", harness.Upstream("ghcr.io", reg.URL))) // default flags: access log on
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	const n = 500
	for i := range n {
		resp, err := client.Head("http://" + p.Addr + "/v2/team/app/manifests/v1")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	client.CloseIdleConnections()
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.Exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("regcache did not exit within 20 s of SIGTERM")
	}
	got := 0
	for _, line := range strings.Split(strings.TrimSpace(p.Logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if m["msg"] == "request" {
			got++
		}
	}
	if got != n {
		t.Fatalf("%d request lines after SIGTERM for %d requests", got, n)
	}
}
