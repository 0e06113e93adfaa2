package harness

// What reached a test registry: every request, in order, with what it carried, for the
// tests that prove what a lookup costs upstream and what regcache sends there.

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"regcache/upstream/registrytest"
)

// Recorder is installed as a registry's fault hook: it records each request, then hands
// it to the fault set with Set, if any, or lets the registry answer.
type Recorder struct {
	reg   *registrytest.Registry
	mu    sync.Mutex
	seen  []Seen
	fault atomic.Pointer[registrytest.Fault]
}

// Seen is one request a registry received.
type Seen struct {
	Method, Path, Auth string
	Accept             []string
}

// String is the request as ManifestRequest spells it: "HEAD /v2/repo/manifests/ref".
func (s Seen) String() string { return s.Method + " " + s.Path }

// Record installs a Recorder on reg (in place of any fault).
func Record(reg *registrytest.Registry) *Recorder {
	rec := &Recorder{reg: reg}
	reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		rec.mu.Lock()
		rec.seen = append(rec.seen, Seen{r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Values("Accept")})
		rec.mu.Unlock()
		if f := rec.fault.Load(); f != nil {
			return (*f)(w, r)
		}
		return false
	})
	return rec
}

// Set installs f behind the recorder (nil removes it).
func (rec *Recorder) Set(f registrytest.Fault) {
	if f == nil {
		rec.fault.Store(nil)
		return
	}
	rec.fault.Store(&f)
}

// Reset forgets what was recorded and zeroes the registry's own counters.
func (rec *Recorder) Reset() {
	rec.mu.Lock()
	rec.seen = nil
	rec.mu.Unlock()
	rec.reg.ResetCounts()
}

// Manifests returns the manifest requests recorded, in order.
func (rec *Recorder) Manifests() []Seen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []Seen
	for _, s := range rec.seen {
		if strings.Contains(s.Path, "/manifests/") {
			out = append(out, s)
		}
	}
	return out
}

// ManifestRequest is a manifest request as upstream sees it (ManifestRequest("HEAD",
// "team/app", "v1")).
func ManifestRequest(method, repo, ref string) string {
	return method + " /v2/" + repo + "/manifests/" + ref
}

// ExpectManifests checks that exactly want (ManifestRequests, in order) reached upstream
// since the last Reset, and that the registry's own counters agree.
func (rec *Recorder) ExpectManifests(t testing.TB, what string, want ...string) {
	t.Helper()
	var got []string
	for _, s := range rec.Manifests() {
		got = append(got, s.String())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: upstream manifest requests %q, want %q", what, got, want)
	}
	var gets, heads int
	for _, r := range want {
		if strings.HasPrefix(r, "GET ") {
			gets++
		} else {
			heads++
		}
	}
	if g, h := rec.reg.Count("GET", "manifest"), rec.reg.Count("HEAD", "manifest"); g != gets || h != heads {
		t.Fatalf("%s: upstream counted GET %d HEAD %d, want GET %d HEAD %d", what, g, h, gets, heads)
	}
}

// ExpectNoTraffic fails when any of regs received a request since its counters were last
// reset.
func ExpectNoTraffic(t testing.TB, what string, regs ...*registrytest.Registry) {
	t.Helper()
	for i, reg := range regs {
		if n := reg.Total(); n != 0 {
			t.Fatalf("%s: registry %d received %d requests, want none", what, i, n)
		}
	}
}

// ExpectAllTypesAsked checks that a request's Accept lines named all four manifest types.
func ExpectAllTypesAsked(t testing.TB, s Seen) {
	t.Helper()
	var got []string
	for _, line := range s.Accept {
		for _, item := range strings.Split(line, ",") {
			got = append(got, strings.TrimSpace(strings.Split(item, ";")[0]))
		}
	}
	for _, mt := range ManifestTypes {
		if !slices.Contains(got, mt) {
			t.Fatalf("%s %s went upstream with Accept %q, missing %s", s.Method, s.Path, s.Accept, mt)
		}
	}
}
