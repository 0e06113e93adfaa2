package cache

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// newLocal is a cache without a shared tier in front of reg, closed with the test.
func newLocal(t *testing.T, reg *registrytest.Registry, cfg Config, tagTTL time.Duration) (*Cache, *Origin) {
	t.Helper()
	r, err := upstream.New(upstream.Options{Name: "reg.test", URL: reg.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = 8 << 20
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); r.Close() })
	return c, &Origin{Registry: r, TagTTL: tagTTL}
}

// TestHeadAfterVerifiedBody: upstream's HEAD claims a type and size (docker v2, 12345
// bytes) that its body does not have. Once the body has been fetched and verified, by tag
// (HEAD then GET) or by digest (containerd's HEAD tag, GET digest), every later answer for
// the tag is the verified body's descriptor, HEAD hits included.
func TestHeadAfterVerifiedBody(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	reg.PutManifest(t, "team/app", "v2", img.MediaType, img.Body)
	reg.SetFault(reg.ClaimOnHead(upstream.MediaTypeDockerManifest, 12345))
	c, o := newLocal(t, reg, Config{MaxStale: time.Hour, NegativeTTL: time.Minute, RevalidateWait: time.Second}, time.Hour)
	ask := func(ref string, body bool) Answer {
		t.Helper()
		a, err := c.Manifest(context.Background(), o, "team/app", ref, body)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		return a
	}
	for _, tc := range []struct {
		tag, get string // the GET in between: by tag or by digest
	}{{"v1", "v1"}, {"v2", img.Digest}} {
		if a := ask(tc.tag, false); string(a.Digest) != img.Digest {
			t.Fatalf("%s: HEAD answered digest %s, want %s", tc.tag, a.Digest, img.Digest)
		}
		if a := ask(tc.get, true); a.MediaType != img.MediaType || a.Size != int64(len(img.Body)) {
			t.Fatalf("GET %s: %s, %d bytes; want the verified %s, %d", tc.get, a.MediaType, a.Size, img.MediaType, len(img.Body))
		}
		for i, body := range []bool{false, true, false} {
			a := ask(tc.tag, body)
			if a.MediaType != img.MediaType || a.Size != int64(len(img.Body)) {
				t.Fatalf("%s after GET %s, answer %d (body %v, %v): %s, %d bytes; want the verified %s, %d",
					tc.tag, tc.get, i, body, a.Status, a.MediaType, a.Size, img.MediaType, len(img.Body))
			}
		}
	}
}
