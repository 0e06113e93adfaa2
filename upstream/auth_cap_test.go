package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func scopeN(i int) string { return fmt.Sprintf("repository:org/app-%06d:pull", i) }

func TestTokenScopesCapped(t *testing.T) {
	var a authState
	later := time.Now().Add(time.Hour)
	const extra = 1000
	for i := range maxTokenScopes + extra {
		a.storeToken(scopeN(i), token{value: "t", expires: later})
	}
	if n := len(a.tokens); n != maxTokenScopes {
		t.Fatalf("%d scopes kept after %d stores, want the cap %d", n, maxTokenScopes+extra, maxTokenScopes)
	}
	now := time.Now()
	// The oldest went, the newest stayed.
	for _, i := range []int{0, 1, extra - 1} {
		if _, ok := a.cachedToken(scopeN(i), now); ok {
			t.Errorf("scope %d (among the oldest) is still kept", i)
		}
	}
	for _, i := range []int{extra, extra + 1, maxTokenScopes + extra - 1} {
		if _, ok := a.cachedToken(scopeN(i), now); !ok {
			t.Errorf("scope %d (among the newest) was dropped", i)
		}
	}
	if len(a.order) > 2*maxTokenScopes {
		t.Errorf("order holds %d items, want at most %d", len(a.order), 2*maxTokenScopes)
	}
}

func TestTokenCapDropsExpiredFirst(t *testing.T) {
	var a authState
	now := time.Now()
	later := now.Add(time.Hour)
	for i := range maxTokenScopes {
		exp := later
		if i >= 2000 && i < 2010 {
			exp = now.Add(-time.Second) // ten expired tokens in the middle
		}
		a.storeToken(scopeN(i), token{value: "t", expires: exp})
	}
	for i := range 10 {
		a.storeToken(scopeN(100_000+i), token{value: "t", expires: later})
	}
	if n := len(a.tokens); n != maxTokenScopes {
		t.Fatalf("%d scopes, want %d", n, maxTokenScopes)
	}
	// The ten expired ones made the room; the oldest live ones stayed.
	for _, i := range []int{0, 1, 1999, 2010} {
		if _, ok := a.cachedToken(scopeN(i), now); !ok {
			t.Errorf("live scope %d was dropped while expired ones could go", i)
		}
	}
	for i := 2000; i < 2010; i++ {
		if _, ok := a.tokens[scopeN(i)]; ok {
			t.Errorf("expired scope %d still kept", i)
		}
	}
	// With nothing expired, the next store evicts the oldest: scope 0.
	a.storeToken(scopeN(200_000), token{value: "t", expires: later})
	if _, ok := a.tokens[scopeN(0)]; ok {
		t.Error("scope 0, the oldest, was kept at the cap")
	}
	if _, ok := a.tokens[scopeN(1)]; !ok {
		t.Error("scope 1 was dropped: only one slot was needed")
	}
}

func TestTokenRenewalKeepsItsScope(t *testing.T) {
	var a authState
	later := time.Now().Add(time.Hour)
	for i := range maxTokenScopes {
		a.storeToken(scopeN(i), token{value: "t", expires: later})
	}
	// Renewing a kept scope at the cap evicts nothing, and makes it the newest.
	a.storeToken(scopeN(0), token{value: "renewed", expires: later})
	if n := len(a.tokens); n != maxTokenScopes {
		t.Fatalf("%d scopes after a renewal, want %d", n, maxTokenScopes)
	}
	a.storeToken(scopeN(900_000), token{value: "t", expires: later})
	if v, ok := a.cachedToken(scopeN(0), time.Now()); !ok || v != "renewed" {
		t.Errorf("renewed scope 0: %q, %v; want it kept as the newest", v, ok)
	}
	if _, ok := a.tokens[scopeN(1)]; ok {
		t.Error("scope 1 (now the oldest) was kept")
	}
	// A scope renewed over and over leaves no trail: order stays bounded.
	for range 5 * maxTokenScopes {
		a.storeToken(scopeN(7), token{value: "t", expires: later})
	}
	if len(a.order) > 2*maxTokenScopes+1 {
		t.Errorf("order holds %d items after renewals, want at most %d", len(a.order), 2*maxTokenScopes+1)
	}
	if n := len(a.tokens); n != maxTokenScopes {
		t.Errorf("%d scopes, want %d", n, maxTokenScopes)
	}
}

// TestTokenCapThroughRegistry asks more distinct repositories than the cap through a real
// Registry against a token-issuing upstream: the scopes kept stay at the cap, and a scope
// dropped for room costs exactly one token request when asked again.
func TestTokenCapThroughRegistry(t *testing.T) {
	if testing.Short() {
		t.Skip("short: asks 4,196 repositories")
	}
	var tokens atomic.Int32
	r := newTestRegistry(t, notFoundServer(t, &tokens, nil), "", "")
	ctx := context.Background()
	const n = maxTokenScopes + 100
	for i := range n {
		if _, err := r.HeadManifest(ctx, fmt.Sprintf("org/app-%06d", i), "latest"); err == nil {
			t.Fatal("want not found")
		}
	}
	r.auth.mu.Lock()
	kept := len(r.auth.tokens)
	r.auth.mu.Unlock()
	if kept != maxTokenScopes {
		t.Fatalf("%d scopes kept after %d repositories, want the cap %d", kept, n, maxTokenScopes)
	}
	if got := tokens.Load(); got != n {
		t.Fatalf("%d token requests for %d repositories, want one each", got, n)
	}
	// The newest is still cached (no token request); the oldest was dropped (one more).
	_, _ = r.HeadManifest(ctx, fmt.Sprintf("org/app-%06d", n-1), "latest")
	if got := tokens.Load(); got != n {
		t.Fatalf("a kept scope cost a token request (%d)", got)
	}
	_, _ = r.HeadManifest(ctx, fmt.Sprintf("org/app-%06d", 0), "latest")
	if got := tokens.Load(); got != n+1 {
		t.Fatalf("a dropped scope cost %d token requests, want 1", got-n)
	}
}

// TestTokenFetchCoalesced: a burst of cold requests for one repository asks the token
// endpoint once; a caller that gives up does not fail the others waiting on the same
// token request.
func TestTokenFetchCoalesced(t *testing.T) {
	var tokens atomic.Int32
	release := make(chan struct{})
	r := newTestRegistry(t, notFoundServer(t, &tokens, release), "", "")

	impatient, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := r.HeadManifest(impatient, "org/app", "latest")
		gaveUp <- err
	}()
	for tokens.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	errs := make(chan error, 50)
	for range 50 {
		go func() {
			_, err := r.HeadManifest(context.Background(), "org/app", "latest")
			errs <- err
		}()
	}
	cancel()
	if err := <-gaveUp; err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("the caller that gave up got %v, want its own cancellation", err)
	}
	time.Sleep(20 * time.Millisecond) // let the 50 join the token request in flight
	close(release)
	for range 50 {
		if err := <-errs; !errors.Is(err, ErrNotFound) {
			t.Fatalf("a waiter got %v, want the registry's not-found (the token reached it)", err)
		}
	}
	if got := tokens.Load(); got != 1 {
		t.Fatalf("%d token requests for 51 concurrent callers of one scope, want 1", got)
	}
}

// notFoundServer is a bearerServer whose manifests are all 404 (MANIFEST_UNKNOWN) once
// the token is there; each token request waits for release when that is not nil.
func notFoundServer(t *testing.T, tokens *atomic.Int32, release <-chan struct{}) string {
	return bearerServer(t, `{"token":"good","expires_in":300}`, tokens, release, func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/manifests/") {
			return // /v2/: 200
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}`))
	}).URL
}
