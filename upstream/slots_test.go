package upstream

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/upstream/registrytest"
)

// boundedRegistry is a Registry for reg with a bound of one: every exchange must give its
// slot back before the next can go, so a leaked or nested slot shows as a Busy error.
func boundedRegistry(t *testing.T, reg *registrytest.Registry) *Registry {
	t.Helper()
	r, err := New(Options{Name: "t", URL: reg.URL, Timeout: 8 * time.Second, MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// TestBoundOfOneServesEverySequence: the ping, the token request, a HEAD that falls back
// to GET, a refused redirect and a blob stream left open all run under a bound of one, so
// none of them may hold a slot while asking for another or keep one after it is done.
func TestBoundOfOneServesEverySequence(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	blob := reg.PushBlob(t, "team/app", []byte(strings.Repeat("layer", 1000)))
	r := boundedRegistry(t, reg)
	ctx := context.Background()

	reg.SetFault(reg.StripDigestOnHead()) // HEAD answers without a digest: GET follows
	m, err := r.HeadManifest(ctx, "team/app", "v1")
	if err != nil || string(m.Digest) != img.Digest || m.Body == nil {
		t.Fatalf("HEAD falling back to GET: %+v, %v", m.Descriptor, err)
	}
	reg.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
		return true
	}))
	if _, err := r.GetManifest(ctx, "team/app", "v1"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("redirect to the metadata service: %v, want it refused", err)
	}
	reg.SetFault(nil)

	b, err := r.OpenBlob(ctx, http.MethodGet, "team/app", digest.Digest(blob), "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Body.Close()
	// The stream is open and unread: its slot went back with its headers.
	if _, err := r.GetManifest(ctx, "team/app", img.Digest); err != nil {
		t.Fatalf("GET beside an open blob stream: %v", err)
	}
	// A slot kept or asked for twice shows as a Busy failure above; none was turned away.
	if n := r.TurnedAway(); n != 0 {
		t.Fatalf("the bound turned %d requests of the sequence away", n)
	}
}

// TestBoundTurnsAwayWithBusy: with the one slot held by a slow request, the next waits a
// quarter of the timeout and fails Busy (KindUnavailable, with Retry-After); nothing of it
// reaches upstream, and the slot serves again once the slow request is done.
func TestBoundTurnsAwayWithBusy(t *testing.T) {
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	release := make(chan struct{})
	reg.SetFault(registrytest.OnManifests(func(w http.ResponseWriter, r *http.Request) bool {
		<-release
		return false
	}))
	r := boundedRegistry(t, reg)
	ctx := context.Background()
	if _, err := r.Tags(ctx, "team/app", PageRequest{}); err != nil { // the ping, before the slot is held
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var slowErr error
	wg.Go(func() { _, slowErr = r.GetManifest(ctx, "team/app", "v1") })
	for reg.Count(http.MethodGet, "manifest") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	_, err := r.GetManifest(ctx, "team/app", "v1")
	var ue *Error
	if !errors.As(err, &ue) || !ue.Busy || ue.Kind != KindUnavailable || ue.RetryAfter != 2*time.Second {
		t.Fatalf("got %v, want Busy with Retry-After 2s", err)
	}
	if took := time.Since(start); took < 1500*time.Millisecond || took > 5*time.Second {
		t.Errorf("turned away after %v, want about 2s (a quarter of the 8s timeout)", took)
	}
	if n := r.TurnedAway(); n != 1 {
		t.Errorf("TurnedAway() = %d, want 1", n)
	}

	// A caller that gives up while waiting was not turned away by the bound: its own
	// context's end is what it gets, and it is not counted.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = r.GetManifest(cctx, "team/app", "v1")
	if !errors.As(err, &ue) || ue.Busy || ue.Kind != KindUnavailable || !strings.Contains(err.Error(), "canceled") {
		t.Errorf("cancelled wait: got %v (%+v), want unavailable from the context, not Busy", err, ue)
	}
	dctx, cancelD := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelD()
	_, err = r.GetManifest(dctx, "team/app", "v1")
	if !errors.As(err, &ue) || ue.Busy || !ue.Timeout {
		t.Errorf("wait past the caller's deadline: got %v (%+v), want a timeout, not Busy", err, ue)
	}
	if n := r.TurnedAway(); n != 1 {
		t.Errorf("TurnedAway() = %d after the callers gave up, want still 1", n)
	}
	if n := reg.Count(http.MethodGet, "manifest"); n != 1 {
		t.Errorf("%d manifest requests reached upstream, want only the slow one", n)
	}
	close(release)
	wg.Wait()
	if slowErr != nil {
		t.Fatal(slowErr)
	}
	if _, err := r.GetManifest(ctx, "team/app", "v1"); err != nil {
		t.Fatalf("after the slow request: %v", err)
	}
}
