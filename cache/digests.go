package cache

// Manifests by digest: content-addressed, so cached until evicted and never revalidated.
// A HEAD may store the descriptor alone, which the body, once fetched and verified, replaces.

import (
	"context"
	"hash/maphash"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

func (c *Cache) byDigest(ctx context.Context, o *Origin, repo string, d digest.Digest, wantBody bool) (Answer, error) {
	up := o.Registry.Name()
	repo, d = strings.Clone(repo), digest.Digest(strings.Clone(string(d)))
	if err := c.store.negative(negativeKey(up, repo, string(d))); err != nil {
		return Answer{}, err
	}
	m, err := c.fetchDigest(ctx, o, repo, d, wantBody)
	if err != nil {
		return Answer{}, err
	}
	return answer(m.Descriptor, m.Body, wantBody, Miss, time.Time{}), nil
}

// fetchDigest asks upstream for a manifest by digest, coalesced, and caches it for good:
// content-addressed entries never go stale.
func (c *Cache) fetchDigest(ctx context.Context, o *Origin, repo string, d digest.Digest, wantBody bool) (upstream.Manifest, error) {
	up := o.Registry.Name()
	verb := "head"
	if wantBody {
		verb = "get"
	}
	m, err, _ := c.flights.Do(ctx, verb+"\x00"+manifestKey(up, repo, string(d)), func() (upstream.Manifest, error) {
		// The caller looked in the store before joining; a flight that finished in between
		// may have stored the answer already, and upstream must not be asked twice.
		if e := c.store.manifest(manifestKey(up, repo, string(d))); e != nil && (e.Body != nil || !wantBody) {
			return upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body}, nil
		}
		if err := c.store.negative(negativeKey(up, repo, string(d))); err != nil {
			return upstream.Manifest{}, err
		}
		ask := func() (upstream.Manifest, error) { return c.askDigest(o, repo, d, wantBody) }
		look := func() (upstream.Manifest, bool) {
			e := c.shared.getManifest(up, repo, d)
			if e == nil {
				return upstream.Manifest{}, false
			}
			m := upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body}
			c.putManifest(up, repo, m)
			return m, true
		}
		var m upstream.Manifest
		var err error
		if wantBody {
			m, err = fleet(c.shared, "manifest:"+up+"/"+repo+"@"+string(d), c.fleetWait(o), look, ask)
		} else {
			// Only bodies are shared, and a HEAD by digest is one cheap request: no wait.
			if c.shared != nil {
				if m, ok := look(); ok {
					return m, nil
				}
			}
			m, err = ask()
		}
		if err != nil {
			c.remember(up, repo, string(d), err)
		}
		return m, err
	})
	return m, err
}

// askDigest asks upstream for a manifest by digest and caches the answer in both tiers.
func (c *Cache) askDigest(o *Origin, repo string, d digest.Digest, wantBody bool) (upstream.Manifest, error) {
	up := o.Registry.Name()
	var m upstream.Manifest
	var err error
	if wantBody {
		m, err = o.Registry.GetManifest(context.Background(), repo, string(d))
	} else {
		m, err = o.Registry.HeadManifest(context.Background(), repo, string(d))
	}
	if err != nil {
		return m, err
	}
	c.putManifest(up, repo, m)
	if c.shared != nil {
		c.shared.setManifest(up, repo, m)
	}
	return m, nil
}

// putManifest caches a verified manifest, never replacing a full entry with a bodiless one,
// and returns the entry now standing for the digest (the one kept, when m has no body).
// A body replacing a bodiless entry tells it its verified descriptor first, for the tag
// entries that took their type and size from a HEAD.
func (c *Cache) putManifest(up, repo string, m upstream.Manifest) *ManifestEntry {
	key := manifestKey(up, repo, string(m.Digest))
	mu := &c.putLocks[maphash.String(putSeed, key)%uint64(len(c.putLocks))]
	mu.Lock()
	defer mu.Unlock()
	old := c.store.manifest(key)
	if m.Body == nil && old != nil {
		return old
	}
	if old != nil && old.Body == nil && old.verified.Load() == nil {
		d := m.Descriptor
		old.verified.Store(&d)
	}
	e := &ManifestEntry{Descriptor: m.Descriptor, Body: m.Body}
	c.store.set(key, e, int64(len(m.Body)), 0)
	return e
}

var putSeed = maphash.MakeSeed()

// claimed is what to store for a tag that a HEAD (or another replica's entry) says points
// at d: a verified body's descriptor when one is known (claim nil), or d with the bodiless
// entry that will learn the verified one (claim).
func (c *Cache) claimed(up, repo string, d upstream.Descriptor) (upstream.Descriptor, *ManifestEntry) {
	e := c.putManifest(up, repo, upstream.Manifest{Descriptor: d})
	if e.Body != nil {
		return e.Descriptor, nil
	}
	if v := e.verified.Load(); v != nil {
		return *v, nil
	}
	return d, e
}
