package cache

// Manifests by digest: content-addressed, so cached until evicted and never revalidated.
// A HEAD may store the descriptor alone, which the body, once fetched and verified, replaces.

import (
	"context"
	"hash/maphash"

	"github.com/opencontainers/go-digest"

	"regcache/internal/budget"
	"regcache/upstream"
)

// manifestByDigest is a manifest by digest that memory does not hold (with its body, when
// wantBody), over the one road of load.go, and kept for good; reason is budget.Client for a
// client's, or background work's.
func (c *Cache) manifestByDigest(ctx context.Context, o *Origin, repo string, d digest.Digest, wantBody bool, reason budget.Reason) (*ManifestEntry, error) {
	up := o.Registry.Name()
	return load(ctx, &c.digestFlights, c.fleet, c.fleetWait(o),
		&digestLookup{content{c: c, o: o, up: up, repo: repo, d: d, wantBody: wantBody, mkey: manifestKey(up, repo, string(d))}, reason})
}

// content is what a lookup of content-addressed bytes (a manifest or a blob by digest)
// names: the bytes of d in repo on o, or (wantBody false) only what a HEAD tells.
type content struct {
	c        *Cache
	o        *Origin
	up, repo string
	d        digest.Digest
	wantBody bool
	mkey     string // its memory key
}

// digestLookup is a manifest's miss by digest, for load.
type digestLookup struct {
	content
	reason budget.Reason
}

// key is also the fleet lock's name for a GET: <prefix>lock:manifest:<upstream>/<repo>@<digest>.
// A HEAD is another flight, and takes no lock.
func (l *digestLookup) key() string {
	if !l.wantBody {
		return "manifest-head:" + l.up + "/" + l.repo + "@" + string(l.d)
	}
	return "manifest:" + l.up + "/" + l.repo + "@" + string(l.d)
}

// waits: only bodies are shared, and a HEAD by digest is one cheap request.
func (l *digestLookup) waits() bool { return l.wantBody }

func (l *digestLookup) background() bool { return l.reason != budget.Client }

func (l *digestLookup) memory() (*ManifestEntry, bool, error) {
	if e := l.c.store.manifest(l.mkey); e != nil && (e.Body != nil || !l.wantBody) {
		return e, true, nil
	}
	return nil, false, l.c.store.negative(negativeKey(l.up, l.repo, string(l.d)))
}

func (l *digestLookup) fleet() (*ManifestEntry, bool) {
	e := l.c.fleet.getManifest(l.up, l.repo, l.d)
	if e == nil {
		return nil, false
	}
	return l.c.putManifest(l.up, l.repo, upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body}), true
}

func (l *digestLookup) fetch() (m upstream.Manifest, err error) {
	done, err := spend(l.o, l.reason, l.wantBody)
	if err != nil {
		return upstream.Manifest{}, err
	}
	defer func() { done(err) }()
	if l.wantBody {
		return l.o.Registry.GetManifest(context.Background(), l.repo, string(l.d))
	}
	return l.o.Registry.HeadManifest(context.Background(), l.repo, string(l.d))
}

// store keeps the manifest for good: content-addressed entries never go stale.
func (l *digestLookup) store(m upstream.Manifest) *ManifestEntry {
	e := l.c.putManifest(l.up, l.repo, m)
	l.c.fleet.setManifest(l.up, l.repo, m)
	return e
}

func (l *digestLookup) failed(err error) { l.c.remember(l.up, l.repo, string(l.d), err) }

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
	e := &ManifestEntry{Descriptor: m.Descriptor, Body: m.Body, key: c.entryKey(key)}
	c.store.set(key, e, int64(len(m.Body)), 0)
	return e
}

var putSeed = maphash.MakeSeed()

// claimed is what to store for a tag that a HEAD (or another replica's entry) says points
// at d: a verified body's descriptor when one is known (with the body's entry when it is
// held), or d with the bodiless entry that will learn the verified one (claim).
func (c *Cache) claimed(up, repo string, d upstream.Descriptor) (_ upstream.Descriptor, body, claim *ManifestEntry) {
	e := c.putManifest(up, repo, upstream.Manifest{Descriptor: d})
	if e.Body != nil {
		return e.Descriptor, e, nil
	}
	if v := e.verified.Load(); v != nil {
		return *v, nil, nil
	}
	return d, nil, e
}
