package cache

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// TestTokenEndpointFailureServesStale: the token endpoint refusing regcache's own
// credentials (401: they expired; or a one-off 403) is an upstream failure, not an answer
// about the image: a stale tag is served and kept, a cold tag fails as unavailable, and
// nothing is remembered, so the first request after upstream recovers is answered.
// A denial of the manifest itself, with a valid token, is an answer (403), but it does not
// delete the stale tag either.
func TestTokenEndpointFailureServesStale(t *testing.T) {
	reg := registrytest.New(t, registrytest.BearerBasic)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	for _, cold := range []string{"cold401", "cold403"} {
		reg.PutManifest(t, "team/app", cold, img.MediaType, img.Body)
	}
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Username: reg.Username, Password: reg.Password, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const tagTTL, negTTL = 100 * time.Millisecond, 400 * time.Millisecond
	c, err := New(Config{MaxSize: 8 << 20, MaxStale: time.Hour, NegativeTTL: negTTL, RevalidateWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); r.Close() })
	o := &Origin{Registry: r, TagTTL: tagTTL}
	ask := func(ref string, body bool) (Answer, error) {
		return c.Manifest(context.Background(), o, "team/app", ref, body)
	}
	if a, err := ask("v1", true); err != nil || a.Status != Miss {
		t.Fatalf("first GET: %v %v", a.Status, err)
	}

	for _, code := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		cold := "cold" + strconv.Itoa(code)
		time.Sleep(tagTTL + 20*time.Millisecond) // v1 is stale
		// The upstream forgets our token; its token endpoint refuses our credentials once.
		reg.RevokeTokens()
		reg.SetFault(registrytest.Once(registrytest.OnToken(registrytest.Status(code))))
		a, err := ask("v1", true)
		if err != nil || a.Status != Stale || string(a.Digest) != img.Digest {
			t.Fatalf("token endpoint %d, stale tag: %v %s %v; want the stale v1", code, a.Status, a.Digest, err)
		}
		if reg.Count("GET", "token") == 0 {
			t.Fatal("the token endpoint was never asked: the test did not exercise it")
		}
		// A cold tag has nothing to fall back on: unavailable, never denied.
		reg.RevokeTokens()
		reg.SetFault(registrytest.Once(registrytest.OnToken(registrytest.Status(code))))
		if _, err := ask(cold, false); !errors.Is(err, upstream.ErrUnavailable) || errors.Is(err, upstream.ErrDenied) {
			t.Fatalf("token endpoint %d, cold tag: %v; want unavailable", code, err)
		}
		// Upstream recovered: answered at once, nothing remembered, the tag never deleted.
		if a, err := ask("v1", false); err != nil || a.Status != Revalidated {
			t.Fatalf("token endpoint %d, after recovery: %v %v; want REVALIDATED", code, a.Status, err)
		}
		if a, err := ask(cold, false); err != nil || string(a.Digest) != img.Digest {
			t.Fatalf("token endpoint %d, cold tag after recovery: %v", code, err)
		}
	}

	// A manifest-level denial with a valid token is an answer, but the stale tag stays.
	time.Sleep(tagTTL + 20*time.Millisecond)
	reg.SetFault(registrytest.Once(registrytest.OnManifests(registrytest.Status(http.StatusForbidden))))
	if _, err := ask("v1", false); !errors.Is(err, upstream.ErrDenied) {
		t.Fatalf("manifest denied: %v, want denied", err)
	}
	if c.store.tag(tagKey("reg.test", "team/app", "v1")) == nil {
		t.Fatal("a manifest-level denial deleted the stale tag")
	}
	time.Sleep(negTTL + 50*time.Millisecond)
	if a, err := ask("v1", false); err != nil || a.Status != Revalidated {
		t.Fatalf("after the denial's negative_ttl: %v %v; want REVALIDATED (the tag kept)", a.Status, err)
	}
}
