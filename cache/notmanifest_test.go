package cache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/cache/redistest"
	"regcache/upstream"
	"regcache/upstream/registrytest"
)

// TestNotAManifestIsNeitherCachedNorShared: a body of null, or one whose mediaType
// contradicts its Content-Type, is refused as invalid by tag and by digest, GET and HEAD
// alike; nothing of it is kept in memory or written to Redis, and the next request asks
// upstream again.
func TestNotAManifestIsNeitherCachedNorShared(t *testing.T) {
	rs := redistest.Start(t)
	reg := registrytest.New(t, registrytest.NoAuth)
	img := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	rp := newReplica(t, reg, rs.Addr, time.Second)
	for _, tc := range []struct {
		name, contentType string
		body              []byte
	}{
		{"null", upstream.MediaTypeOCIManifest, []byte("null")},
		{"mediaType contradicts Content-Type", upstream.MediaTypeDockerManifest, img.Body},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := digest.FromBytes(tc.body)
			// HEAD answers without a length, so that the HEAD too must fetch the body.
			reg.SetFault(registrytest.OnManifests(registrytest.Chain(
				registrytest.OnMethod("HEAD", registrytest.Serve("application/json", d.String(), nil)),
				registrytest.Serve(tc.contentType, d.String(), tc.body))))
			for _, ref := range []string{"v1", d.String()} {
				for _, body := range []bool{true, false} {
					before := manifests(reg)
					_, err := rp.c.Manifest(context.Background(), rp.o, "team/app", ref, body)
					if !errors.Is(err, upstream.ErrInvalid) {
						t.Fatalf("%s (body %v): %v, want an invalid answer", ref, body, err)
					}
					if manifests(reg) == before {
						t.Fatalf("%s (body %v): upstream was not asked: the refused answer was kept", ref, body)
					}
					if _, ok := rp.c.Hit(&Request{Origin: rp.o, Repo: "team/app", Ref: ref, WantBody: body, Now: time.Now()}); ok {
						t.Fatalf("%s (body %v): the refused answer is in memory", ref, body)
					}
				}
			}
			for _, pattern := range []string{"rc-test:manifest:*", "rc-test:tag:*"} {
				if keys, err := rs.Do("KEYS", pattern); err != nil || keys != "*0" {
					t.Fatalf("Redis holds %s after the refused answers: %s %v", pattern, keys, err)
				}
			}
		})
	}
}
