package upstream

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream/registrytest"
)

func breakerRegistry(t *testing.T, reg *registrytest.Registry, backoff, limit time.Duration) *Registry {
	t.Helper()
	r, err := New(Options{Name: "t", URL: reg.URL, Timeout: 5 * time.Second,
		FailuresToOpen: 3, ErrorBackoff: backoff, BackoffCap: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// errBreakerOpen reports an error the breaker gave without asking upstream.
func errBreakerOpen(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.BreakerOpen && e.Kind == KindUnavailable && e.RetryAfter > 0 && NotSent(err)
}

// Three operations failing in a row, whatever they asked for, open the breaker: what
// follows is refused without a request (token and ping included) until the backoff has
// passed; then one operation goes as the probe, a failed probe doubles the backoff up to
// its cap, and a successful one closes the breaker.
func TestBreakerOpensProbesAndCloses(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	const backoff, limit = 200 * time.Millisecond, 350 * time.Millisecond
	r := breakerRegistry(t, reg, backoff, limit)
	ctx := context.Background()

	reg.SetFault(registrytest.Status(http.StatusInternalServerError))
	if _, err := r.HeadManifest(ctx, "team/app", "v1"); KindOf(err) != KindUnavailable {
		t.Fatalf("HEAD: %v", err)
	}
	if _, err := r.Tags(ctx, "team/app", PageRequest{}); KindOf(err) != KindUnavailable {
		t.Fatalf("tags: %v", err)
	}
	if s := r.Breaker(); s.Open || s.Failures != 2 {
		t.Fatalf("after 2 failures: %+v", s)
	}
	if _, err := r.GetManifest(ctx, "team/app", "other"); KindOf(err) != KindUnavailable {
		t.Fatalf("GET: %v", err)
	}
	opened := time.Now()
	s := r.Breaker()
	if !s.Open || s.Failures != 3 || s.Backoff != backoff {
		t.Fatalf("after 3 failures: %+v", s)
	}

	reg.ResetCounts()
	for range 20 {
		_, err := r.HeadManifest(ctx, "team/app", "v1")
		if !errBreakerOpen(err) {
			if time.Since(opened) < backoff {
				t.Fatalf("open breaker: %v", err)
			}
			break // a loaded machine let the backoff pass: that was the probe
		}
	}
	if n := reg.Total(); n != 0 && time.Since(opened) < backoff {
		t.Fatalf("an open breaker let %d requests reach upstream", n)
	}

	// The probe: one operation, the others refused while it is out.
	time.Sleep(time.Until(opened.Add(backoff + 20*time.Millisecond)))
	reg.ResetCounts()
	release := make(chan struct{})
	reg.SetFault(func(w http.ResponseWriter, req *http.Request) bool {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return registrytest.Status(http.StatusServiceUnavailable)(w, req)
	})
	var wg sync.WaitGroup
	wg.Add(1)
	var probeErr error
	go func() {
		defer wg.Done()
		_, probeErr = r.HeadManifest(ctx, "team/app", "v1")
	}()
	for deadline := time.Now().Add(5 * time.Second); reg.Total() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the probe never reached upstream")
		}
	}
	if _, err := r.GetManifest(ctx, "team/app", "v1"); !errBreakerOpen(err) {
		t.Fatalf("while the probe is out: %v", err)
	}
	close(release)
	wg.Wait()
	if KindOf(probeErr) != KindUnavailable || NotSent(probeErr) {
		t.Fatalf("failed probe: %v", probeErr)
	}
	// (The ping that learns how to authenticate goes with it: one operation.)
	if n := reg.Count(http.MethodHead, "manifest") + reg.Count(http.MethodGet, "manifest"); n != 1 {
		t.Fatalf("upstream saw %d manifest requests for one probe", n)
	}
	if s := r.Breaker(); !s.Open || s.Backoff != limit { // doubled, capped
		t.Fatalf("after a failed probe: %+v", s)
	}

	// Upstream is back: the next probe closes the breaker.
	reg.SetFault(nil)
	time.Sleep(time.Until(r.Breaker().NextProbe.Add(20 * time.Millisecond)))
	if _, err := r.HeadManifest(ctx, "team/app", "v1"); err != nil {
		t.Fatalf("probe after recovery: %v", err)
	}
	if s := r.Breaker(); s.Open || s.Failures != 0 || s.Backoff != 0 {
		t.Fatalf("after a successful probe: %+v", s)
	}
	if _, err := r.GetManifest(ctx, "team/app", "v1"); err != nil {
		t.Fatalf("closed breaker: %v", err)
	}
}

// An answer, even a 404, is a success: only failures in a row open the breaker. A 429 is
// the rate-limit guard's, and what the guard held back was never sent: neither counts. A
// 503's Retry-After is the least backoff.
func TestBreakerCountsFailuresInARow(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	r := breakerRegistry(t, reg, 10*time.Millisecond, time.Minute)
	ctx := context.Background()

	reg.SetFault(registrytest.Status(http.StatusBadGateway))
	for range 2 {
		_, _ = r.HeadManifest(ctx, "team/app", "v1")
	}
	reg.SetFault(nil)
	if _, err := r.HeadManifest(ctx, "team/app", "missing"); KindOf(err) != KindNotFound {
		t.Fatalf("404: %v", err)
	}
	if s := r.Breaker(); s.Failures != 0 {
		t.Fatalf("a 404 after 2 failures: %+v", s)
	}

	// 429 to a HEAD holds everything back for Retry-After.
	reg.SetFault(registrytest.RateLimited(time.Second))
	if _, err := r.HeadManifest(ctx, "team/app", "v1"); KindOf(err) != KindRateLimited {
		t.Fatalf("429: %v", err)
	}
	for range 5 {
		if _, err := r.HeadManifest(ctx, "team/app", "v1"); !NotSent(err) {
			t.Fatalf("held back: %v", err)
		}
	}
	if s := r.Breaker(); s.Failures != 0 || s.Open {
		t.Fatalf("one 429 and 5 requests held back: %+v", s)
	}
	r.rl.mu.Lock()
	r.rl.allUntil = time.Time{}
	r.rl.mu.Unlock()

	reg.SetFault(registrytest.Chain(registrytest.WithHeaders("Retry-After", "3"), registrytest.Status(http.StatusServiceUnavailable)))
	for range 3 {
		if _, err := r.GetManifest(ctx, "team/app", "v1"); KindOf(err) != KindUnavailable {
			t.Fatalf("503: %v", err)
		}
	}
	if s := r.Breaker(); !s.Open || s.Backoff < 3*time.Second {
		t.Fatalf("opened by 503s with Retry-After 3: %+v", s)
	}
}

// A caller that gives up is no failure of upstream.
func TestBreakerIgnoresCallersThatLeave(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	r := breakerRegistry(t, reg, time.Second, time.Minute)
	reg.SetFault(registrytest.Delay(time.Minute))
	for range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		if _, err := r.HeadManifest(ctx, "team/app", "v1"); err == nil {
			t.Fatal("a cancelled HEAD succeeded")
		}
	}
	if s := r.Breaker(); s.Failures != 0 || s.Open {
		t.Fatalf("5 callers that left: %+v", s)
	}
}
