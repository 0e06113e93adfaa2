package cache

import (
	"context"
	"errors"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"regcache/internal/flight"
	"regcache/upstream"
)

// Status says how an answer was obtained; the proxy sends it as X-Cache.
type Status uint8

// The answer statuses, as the cost table in docs/design.md names them.
const (
	Miss        Status = iota // upstream was asked for this answer
	Hit                       // answered from memory, upstream not asked
	Revalidated               // a stale tag was confirmed unchanged by one HEAD
	Stale                     // upstream failed or was slow; an expired answer was served
)

var statusNames = [...]string{Miss: "MISS", Hit: "HIT", Revalidated: "REVALIDATED", Stale: "STALE"}

func (s Status) String() string { return statusNames[s] }

// Origin is one upstream as the cache sees it.
type Origin struct {
	Registry *upstream.Registry
	// TagTTL is how long a tag -> digest answer from this upstream stays fresh.
	TagTTL time.Duration
}

// Config tunes a Cache.
type Config struct {
	MaxSize        int64
	MaxStale       time.Duration
	NegativeTTL    time.Duration
	RevalidateWait time.Duration
	// MaxBlobSize is the largest blob (an image config, typically) kept in memory; larger
	// blobs stream through. 0 means 1 MiB.
	MaxBlobSize int64
	// TagsMaxPages bounds the upstream pages one tags request may cost; TagsMaxCount and
	// TagsMaxBytes bound a repository's whole listing. 0 means DefaultTagsMaxPages,
	// DefaultTagsMaxCount, DefaultTagsMaxBytes.
	TagsMaxPages, TagsMaxCount, TagsMaxBytes int
	Logger                                   *zap.Logger
	// Redis, when set, is the second tier the replicas of a fleet share.
	Redis *RedisConfig
}

// Answer is a resolved manifest lookup.
type Answer struct {
	upstream.Descriptor
	// Body is set when the caller asked for it.
	Body      []byte
	Status    Status
	FetchedAt time.Time
}

// Cache resolves manifest references through memory and upstream.
type Cache struct {
	cfg     Config
	log     *zap.Logger
	store   *store
	flights flight.Group[upstream.Manifest]
	// tagFlights and blobFlights coalesce tags listings and small-blob fetches.
	tagFlights  flight.Group[*tagList]
	blobFlights flight.Group[BlobInfo]
	// tagsDropped counts tags upstream listed outside the tag grammar (never served);
	// tagsTruncated counts listings cut at their bound.
	tagsDropped, tagsTruncated atomic.Int64
	now                        func() time.Time
	// shared is the Redis tier, nil without one. Only misses consult it.
	shared *shared
	// credLog spaces out the log lines for upstreams refusing our credentials.
	credLog logEvery
	// putLocks make putManifest's look-then-store one step per manifest key: a HEAD's
	// bodiless entry must not replace a body stored meanwhile, nor a body miss the claim
	// it should tell its descriptor.
	putLocks [64]sync.Mutex
	stop     chan struct{}
	bg       sync.WaitGroup
}

// New builds a Cache.
func New(cfg Config) (*Cache, error) {
	s, err := newStore(cfg.MaxSize)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.MaxBlobSize <= 0 {
		cfg.MaxBlobSize = 1 << 20
	}
	if cfg.TagsMaxPages <= 0 {
		cfg.TagsMaxPages = DefaultTagsMaxPages
	}
	if cfg.TagsMaxCount <= 0 {
		cfg.TagsMaxCount = DefaultTagsMaxCount
	}
	if cfg.TagsMaxBytes <= 0 {
		cfg.TagsMaxBytes = DefaultTagsMaxBytes
	}
	c := &Cache{cfg: cfg, log: log, store: s, now: time.Now, stop: make(chan struct{})}
	if cfg.Redis != nil {
		c.shared = newShared(*cfg.Redis, log)
		c.bg.Add(1)
		go c.watchRedis()
	}
	return c, nil
}

// Close stops the cache's background work.
func (c *Cache) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.bg.Wait()
	if c.shared != nil {
		c.shared.close()
	}
	c.store.close()
}

// watchRedis pings Redis every few seconds, so that /readyz and the metrics tell its
// state even while every request is a first-tier hit, and so that a Redis that came back
// is used again.
func (c *Cache) watchRedis() {
	defer c.bg.Done()
	if err := c.shared.ping(); err != nil {
		c.log.Warn("redis unreachable at start; serving from memory and upstream until it answers",
			zap.String("addr", c.cfg.Redis.Addr), zap.Error(err))
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			_ = c.shared.ping()
		}
	}
}

// RedisStats is the shared tier's state, or nil without one.
func (c *Cache) RedisStats() *RedisStats {
	if c.shared == nil {
		return nil
	}
	return c.shared.stats()
}

// Manifest resolves ref (a tag or a digest) in repo on o. With wantBody false only the
// descriptor is needed (a client HEAD), and upstream is never asked with GET for it unless
// upstream's HEAD answers lack a digest.
func (c *Cache) Manifest(ctx context.Context, o *Origin, repo, ref string, wantBody bool) (Answer, error) {
	return c.ManifestAt(ctx, o, repo, ref, wantBody, c.now())
}

// ManifestAt is Manifest for a request that has read the clock already (the hit path
// reads it once). repo and ref may alias the caller's request buffers: they are copied
// before anything that outlives the call keeps them.
func (c *Cache) ManifestAt(ctx context.Context, o *Origin, repo, ref string, wantBody bool, now time.Time) (Answer, error) {
	if a, ok := c.Hit(o, repo, ref, wantBody, now); ok {
		return a, nil
	}
	if strings.IndexByte(ref, ':') >= 0 {
		if d, err := digest.Parse(ref); err == nil {
			return c.byDigest(ctx, o, repo, d, wantBody)
		}
	}
	return c.byTag(ctx, o, repo, ref, wantBody, now)
}

// Hit answers from memory alone, never asking upstream: a fresh tag, or a manifest by
// digest, with its body when wantBody. ok is false when anything more is needed. Only
// what was validated and fetched is ever stored, so a caller may try Hit before it
// validates the request's names: an invalid name cannot match.
func (c *Cache) Hit(o *Origin, repo, ref string, wantBody bool, now time.Time) (Answer, bool) {
	up := o.Registry.Name()
	if strings.IndexByte(ref, ':') >= 0 {
		// A digest (tags cannot contain ':'); its entry never goes stale.
		k := getKey('m', up, repo, ref)
		e := c.store.manifest(k.String())
		k.release()
		if e == nil || (wantBody && e.Body == nil) {
			return Answer{}, false
		}
		return answer(e.Descriptor, e.Body, wantBody, Hit, time.Time{}), true
	}
	k := getKey('t', up, repo, ref)
	te := c.store.tag(k.String())
	k.release()
	if te == nil || now.Sub(te.FetchedAt) >= o.TagTTL {
		return Answer{}, false
	}
	if !wantBody {
		// A HEAD named the digest; a body fetched since (by digest, or by a GET of the tag)
		// says what its type and size really are.
		return answer(te.descriptor(), nil, false, Hit, te.FetchedAt), true
	}
	if e := c.cachedBody(up, repo, te.Digest); e != nil {
		// The body's own descriptor: it was verified, the tag entry's type and size were not.
		return answer(e.Descriptor, e.Body, true, Hit, te.FetchedAt), true
	}
	return Answer{}, false
}

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

func (c *Cache) byTag(ctx context.Context, o *Origin, repo, tag string, wantBody bool, now time.Time) (Answer, error) {
	up := o.Registry.Name()
	k := getKey('t', up, repo, tag)
	te := c.store.tag(k.String())
	k.release()
	if te != nil && now.Sub(te.FetchedAt) > o.TagTTL+c.cfg.MaxStale {
		te = nil // past serving even as stale
	}
	if te != nil && now.Sub(te.FetchedAt) < o.TagTTL {
		// Fresh, but the body is not here (Hit said so): one GET by digest.
		repo, tag = strings.Clone(repo), strings.Clone(tag)
		a, err := c.withBody(ctx, o, repo, te.Descriptor, nil, wantBody, Hit, te.FetchedAt)
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	}
	// Past here upstream may be asked: keep our own copies of the caller's strings.
	repo, tag = strings.Clone(repo), strings.Clone(tag)
	if te == nil {
		if err := c.store.negative(negativeKey(up, repo, tag)); err != nil {
			return Answer{}, err
		}
		m, err := c.resolveTag(ctx, o, repo, tag, wantBody)
		if err != nil {
			return Answer{}, err
		}
		// The answer's time is when the entry was fetched, by this replica or another one
		// through the shared tier.
		at := now
		k := getKey('t', up, repo, tag)
		if te := c.store.tag(k.String()); te != nil && te.Digest == m.Digest {
			at = te.FetchedAt
		}
		k.release()
		return c.withBody(ctx, o, repo, m.Descriptor, m.Body, wantBody, Miss, at)
	}

	// Stale: one HEAD tells whether the tag still points where it did. A client waits for
	// it at most revalidate_wait; the HEAD itself goes on and refreshes the cache.
	wctx, cancel := context.WithTimeout(ctx, c.cfg.RevalidateWait)
	defer cancel()
	m, err := c.resolveTag(wctx, o, repo, tag, false)
	switch {
	case err == nil && m.Digest == te.Digest:
		// Unchanged, but the body may never have been fetched (the tag moved while GETs were
		// refused): then, as on the fresh path, the manifest it pointed to before stands in.
		a, err := c.withBody(ctx, o, repo, te.Descriptor, m.Body, wantBody, Revalidated, c.now())
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	case err == nil:
		a, err := c.withBody(ctx, o, repo, m.Descriptor, m.Body, wantBody, Miss, c.now())
		return c.orPrevious(o, repo, tag, a, err, te.Descriptor, te.FetchedAt)
	case ctx.Err() != nil:
		return Answer{}, ctx.Err() // the client went away
	case errors.Is(err, context.DeadlineExceeded) || serveStaleOn(err):
		c.log.Warn("serving stale",
			zap.String("upstream", up), zap.String("repository", repo), zap.String("reference", tag),
			zap.Duration("age", now.Sub(te.FetchedAt)), zap.Error(err))
		a, err := c.withBody(ctx, o, repo, te.Descriptor, nil, wantBody, Stale, te.FetchedAt)
		return c.orPrevious(o, repo, tag, a, err, te.Previous, te.FetchedAt)
	default:
		return Answer{}, err
	}
}

// resolveTag asks upstream where tag points now, coalesced per tag: the first caller
// decides between HEAD and GET, and a caller that needs a body the HEAD did not bring
// fetches it by digest afterwards.
func (c *Cache) resolveTag(ctx context.Context, o *Origin, repo, tag string, wantBody bool) (upstream.Manifest, error) {
	up := o.Registry.Name()
	key := tagKey(up, repo, tag)
	m, err, _ := c.flights.Do(ctx, key, func() (upstream.Manifest, error) {
		// The caller looked in the store before joining; a flight for this tag that finished
		// in between has answered already (a burst's straggler, or a revalidation that just
		// landed), and upstream must not be asked twice.
		if te := c.store.tag(key); te != nil && c.now().Sub(te.FetchedAt) < o.TagTTL {
			return upstream.Manifest{Descriptor: te.Descriptor}, nil
		}
		if err := c.store.negative(negativeKey(up, repo, tag)); err != nil {
			return upstream.Manifest{}, err
		}
		// seen is the shared entry last read, fresh or not: where the tag pointed before, for
		// the entry the fetch writes (its Previous), even on a replica that never saw it.
		var seen *TagEntry
		look := func() (upstream.Manifest, bool) {
			te := c.shared.getTag(up, repo, tag)
			if te == nil {
				return upstream.Manifest{}, false
			}
			seen = te
			now := c.now()
			if te.FetchedAt.After(now) {
				te.FetchedAt = now // another replica's clock runs ahead (getTag refused more than a minute)
			}
			if now.Sub(te.FetchedAt) >= o.TagTTL {
				return upstream.Manifest{}, false
			}
			// The entry names a digest; a verified body for it, here or shared, says what its
			// type and size are, as askTag does for upstream's HEADs.
			d, claim := c.claimed(up, repo, te.Descriptor)
			if claim != nil {
				if e := c.shared.getManifest(up, repo, d.Digest); e != nil {
					c.putManifest(up, repo, upstream.Manifest{Descriptor: e.Descriptor, Body: e.Body})
					d, claim = e.Descriptor, nil
				}
			}
			c.putTag(o, key, d, te.FetchedAt, te.Previous, claim)
			return upstream.Manifest{Descriptor: d}, true
		}
		ask := func() (upstream.Manifest, error) { return c.askTag(o, repo, tag, wantBody, seen) }
		m, err := fleet(c.shared, "tag:"+up+"/"+repo+":"+tag, c.fleetWait(o), look, ask)
		if c.remember(up, repo, tag, err) && upstream.KindOf(err) == upstream.KindNotFound {
			// The tag is gone upstream (this replica's answer or the fleet's): stop serving it.
			// A denial is not a deletion: the stale tag stays for when access returns.
			c.store.del(key)
			if c.shared != nil {
				c.shared.delTag(up, repo, tag)
			}
		}
		return m, err
	})
	return m, err
}

// fleetWait bounds how long a request waits on another replica's upstream request for
// o: revalidate_wait plus the upstream timeout, by when the holder's own request has ended.
func (c *Cache) fleetWait(o *Origin) time.Duration {
	return c.cfg.RevalidateWait + o.Registry.Timeout()
}

// askTag asks upstream where tag points now and caches the answer in both tiers. The
// manifest is shared before the tag entry, so a replica that finds the tag finds its body.
func (c *Cache) askTag(o *Origin, repo, tag string, wantBody bool, shared *TagEntry) (upstream.Manifest, error) {
	up := o.Registry.Name()
	key := tagKey(up, repo, tag)
	var m upstream.Manifest
	var err error
	if wantBody {
		m, err = o.Registry.GetManifest(context.Background(), repo, tag)
	} else {
		m, err = o.Registry.HeadManifest(context.Background(), repo, tag)
	}
	if err != nil {
		return m, err // the flight remembers a "no"
	}
	var claim *ManifestEntry
	if m.Body != nil {
		c.putManifest(up, repo, m)
	} else {
		// A HEAD names the digest; for a manifest whose body was verified, its size and
		// type are what that body showed, whatever this answer's Content-Length claims.
		// (A lie here would otherwise be every HEAD's answer until tag_ttl passes.)
		m.Descriptor, claim = c.claimed(up, repo, m.Descriptor)
	}
	if c.shared != nil {
		c.shared.setManifest(up, repo, m)
	}
	var prev upstream.Descriptor
	if shared != nil {
		prev = shared.Previous
		if shared.Digest != m.Digest {
			prev = shared.Descriptor
		}
	}
	if e := c.putTag(o, key, m.Descriptor, c.now(), prev, claim); e != nil && c.shared != nil {
		c.shared.setTag(up, repo, tag, e, o.TagTTL+c.cfg.MaxStale)
	}
	return m, nil
}

// putTag stores where a tag points as of at, keeping where it pointed before it last moved
// (prev, from another replica, unless this one saw a later move); claim is nil when d's
// type and size came from a verified body (see claimed). It returns the entry, or nil when
// tags are not kept at all (tag_ttl and max_stale both 0).
func (c *Cache) putTag(o *Origin, key string, d upstream.Descriptor, at time.Time, prev upstream.Descriptor, claim *ManifestEntry) *TagEntry {
	if o.TagTTL+c.cfg.MaxStale <= 0 {
		return nil
	}
	e := &TagEntry{Descriptor: d, FetchedAt: at, Previous: prev, claim: claim}
	if old := c.store.tag(key); old != nil {
		if old.Digest != d.Digest {
			e.Previous = old.Descriptor
		} else if old.Previous.Digest != "" {
			e.Previous = old.Previous
		}
	}
	// No ristretto TTL: expiry is FetchedAt's business (byTag ignores entries past
	// tag_ttl + max_stale), and a TTL would make every hit read the clock again.
	c.store.set(key, e, 0, 0)
	return e
}

// orPrevious turns a failure to fetch a moved tag's new body into the stale answer the
// cache still has: on Docker Hub the HEAD that shows the move is free, and the GET that
// follows is what the rate limit refuses.
func (c *Cache) orPrevious(o *Origin, repo, tag string, a Answer, err error, prev upstream.Descriptor, at time.Time) (Answer, error) {
	if err == nil || prev.Digest == "" || !serveStaleOn(err) {
		return a, err
	}
	e := c.store.manifest(manifestKey(o.Registry.Name(), repo, string(prev.Digest)))
	if e == nil || e.Body == nil {
		return a, err
	}
	c.log.Warn("serving the previous manifest of a moved tag",
		zap.String("upstream", o.Registry.Name()), zap.String("repository", repo), zap.String("reference", tag), zap.Error(err))
	return answer(e.Descriptor, e.Body, true, Stale, at), nil
}

// cachedBody is the manifest entry for d when it holds a body, looked up without
// allocating.
func (c *Cache) cachedBody(up, repo string, d digest.Digest) *ManifestEntry {
	k := getKey('m', up, repo, string(d))
	e := c.store.manifest(k.String())
	k.release()
	if e == nil || e.Body == nil {
		return nil
	}
	return e
}

// withBody completes an answer: the body comes from what was just fetched, from the
// manifest store, or from one upstream GET by digest.
func (c *Cache) withBody(ctx context.Context, o *Origin, repo string, d upstream.Descriptor, body []byte, wantBody bool, st Status, at time.Time) (Answer, error) {
	if body != nil {
		return answer(d, body, wantBody, st, at), nil
	}
	// A verified body, when there is one, says what d's type and size are: d may be what
	// a HEAD claimed.
	if e := c.cachedBody(o.Registry.Name(), repo, d.Digest); e != nil {
		return answer(e.Descriptor, e.Body, wantBody, st, at), nil
	}
	if !wantBody {
		return answer(d, nil, false, st, at), nil
	}
	m, err := c.fetchDigest(ctx, o, repo, d.Digest, true)
	if err != nil {
		return Answer{}, err
	}
	if st != Stale {
		st = Miss
	}
	return answer(m.Descriptor, m.Body, true, st, at), nil
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

// remember keeps upstream's authoritative "no" (not found, denied) for negative_ttl, so a
// client retrying a typo does not spend the rate limit. It reports whether err was one.
// Our own credentials refused at the token endpoint is no answer, only logged.
func (c *Cache) remember(up, repo, ref string, err error) bool {
	switch upstream.KindOf(err) {
	case upstream.KindNotFound, upstream.KindDenied:
		if c.cfg.NegativeTTL > 0 {
			c.store.set(negativeKey(up, repo, ref), &negativeEntry{err: err}, 0, c.cfg.NegativeTTL)
		}
		return true
	case upstream.KindUnavailable:
		if upstream.CredentialsRejected(err) && c.credLog.due(up) {
			c.log.Warn("upstream refused regcache's credentials at its token endpoint; serving stale answers where the cache has them "+
				"(logged once per 30s per upstream; regcache_upstream_auth_failures_total counts them)",
				zap.String("upstream", up), zap.Error(err))
		}
	}
	return false
}

// serveStaleOn reports the failures that a stale answer may cover: upstream down, slow,
// rate-limiting or answering garbage. Not found and denied are answers, not failures.
func serveStaleOn(err error) bool {
	switch upstream.KindOf(err) {
	case upstream.KindUnavailable, upstream.KindRateLimited, upstream.KindInvalid:
		return true
	}
	return false
}

func answer(d upstream.Descriptor, body []byte, wantBody bool, st Status, at time.Time) Answer {
	if !wantBody {
		body = nil
	}
	return Answer{Descriptor: d, Body: body, Status: st, FetchedAt: at}
}
