package upstream

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream/registrytest"
)

// Failures counts what the upstream failed at (a 5xx, a 429, refused credentials) and
// keeps the last one; a 404, a request held back and a caller gone count nothing, and
// refused credentials show their category, never the token endpoint's text.
func TestFailuresCountsUpstreamFailuresOnly(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	r, err := New(Options{Name: "t", URL: reg.URL, Timeout: 5 * time.Second, Username: reg.Username, Password: reg.Password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx := context.Background()
	if f := r.Failures(); f.Count != 0 || !f.Time.IsZero() {
		t.Fatalf("before any failure: %+v", f)
	}
	if _, err := r.HeadManifest(ctx, "team/app", "missing"); KindOf(err) != KindNotFound {
		t.Fatalf("missing tag: %v", err)
	}
	if f := r.Failures(); f.Count != 0 {
		t.Fatalf("a 404 counted: %+v", f)
	}

	reg.SetFault(registrytest.OnManifests(registrytest.Status(http.StatusBadGateway)))
	before := time.Now()
	if _, err := r.GetManifest(ctx, "team/app", "v1"); KindOf(err) != KindUnavailable {
		t.Fatalf("502: %v", err)
	}
	if f := r.Failures(); f.Count != 1 || f.Kind != "unavailable" || f.Status != 502 || f.Message != "injected failure" || f.Time.Before(before) {
		t.Fatalf("after a 502: %+v", f)
	}

	reg.SetFault(registrytest.OnManifests(registrytest.RateLimited(time.Minute)))
	if _, err := r.GetManifest(ctx, "team/app", "v1"); KindOf(err) != KindRateLimited {
		t.Fatalf("429: %v", err)
	}
	if _, err := r.GetManifest(ctx, "team/app", "v1"); !NotSent(err) {
		t.Fatalf("held back after the 429: %v", err)
	}
	if f := r.Failures(); f.Count != 2 || f.Kind != "rate_limited" || f.Status != 429 {
		t.Fatalf("after a 429 and a request held back: %+v; want 2, the 429 last", f)
	}

	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.HeadManifest(gone, "team/app", "v1"); err == nil {
		t.Fatal("a cancelled HEAD succeeded")
	}
	if f := r.Failures(); f.Count != 2 {
		t.Fatalf("a caller gone counted: %+v", f)
	}

	reg.SetFault(registrytest.OnToken(registrytest.Status(http.StatusUnauthorized)))
	reg.RevokeTokens()
	if _, err := r.HeadManifest(ctx, "team/app", "v1"); !CredentialsRejected(err) {
		t.Fatalf("refused credentials: %v", err)
	}
	if f := r.Failures(); f.Count != 3 || f.Kind != "unavailable" || f.Message != "credentials rejected by the token endpoint" || strings.Contains(f.Message, "injected") {
		t.Fatalf("after refused credentials: %+v; want the category alone", f)
	}

	// A token endpoint that fails otherwise (here a 500 whose body would echo what it was
	// sent) gives its status, never its text: to the caller, in the last failure.
	reg.SetFault(registrytest.OnToken(registrytest.Status(http.StatusInternalServerError)))
	_, err = r.HeadManifest(ctx, "team/app", "v1")
	if KindOf(err) != KindUnavailable || strings.Contains(err.Error(), "injected") || !strings.Contains(err.Error(), "token endpoint answered HTTP 500") {
		t.Fatalf("token endpoint 500: %v", err)
	}
	if f := r.Failures(); f.Count != 4 || f.Message != "token endpoint answered HTTP 500" {
		t.Fatalf("after a token endpoint's 500: %+v", f)
	}
}
