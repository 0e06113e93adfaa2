package cache

// The Cache: its configuration, construction and shutdown, the answer it gives, and what
// every kind of lookup shares (upstream's authoritative no, kept for negative_ttl; which
// failures a stale answer covers).

import (
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"regcache/internal/budget"
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
	// None is an answer the cache did not give (an error, the base endpoint): it has no
	// X-Cache, and the metrics' cache label says "none".
	None
)

var statusNames = [...]string{Miss: "MISS", Hit: "HIT", Revalidated: "REVALIDATED", Stale: "STALE", None: "none"}

func (s Status) String() string { return statusNames[s] }

// Origin is one upstream as the cache sees it.
type Origin struct {
	Registry *upstream.Registry
	// TagTTL is how long a tag -> digest answer from this upstream stays fresh, unless a
	// rule says otherwise for its tag; a tags listing's freshness too.
	TagTTL time.Duration
	// Rules are tried in order against a tag; the first whose Match matches gives its TTL
	// (cache.tag_ttl_rules after upstreams[].tag_ttl_rules).
	Rules []TTLRule
	// Budget bounds the background requests made of this upstream (refresh-ahead, watches);
	// nil admits them all. Client requests never take it.
	Budget *budget.Budget

	// backoffServed counts the stale answers a backoff served (backoff.go).
	backoffServed atomic.Int64
}

// TTLRule gives the tags that Match matches their own TTL.
type TTLRule struct {
	Match *regexp.Regexp
	TTL   time.Duration
}

// TTLFor is how long an answer for tag stays fresh: the first rule matching it, or
// TagTTL. A tag entry keeps what it was stored with, so the hit path never matches rules.
func (o *Origin) TTLFor(tag string) time.Duration {
	for i := range o.Rules {
		if o.Rules[i].Match.MatchString(tag) {
			return o.Rules[i].TTL
		}
	}
	return o.TagTTL
}

// Defaults of the cache: keys. DefaultMaxSize and DefaultMaxBlobSize are also what zero
// Config fields mean. A zero duration is a setting of its own (no freshness, no stale
// answers, nothing remembered, no wait, no backoff), so the others are applied by the
// configuration, for keys a file leaves out.
const (
	DefaultMaxSize        = 256 << 20
	DefaultMaxBlobSize    = 1 << 20
	DefaultTagTTL         = 60 * time.Second
	DefaultMaxStale       = 24 * time.Hour
	DefaultNegativeTTL    = 10 * time.Second
	DefaultRevalidateWait = 2 * time.Second
	// DefaultErrorBackoff is cache.error_backoff's: the backoff after a stale answer's first
	// failed revalidation (backoff.go).
	DefaultErrorBackoff = 5 * time.Second
)

// Config tunes a Cache.
type Config struct {
	// MaxSize is the memory tier's bound, in bytes of cached bodies; 0 means DefaultMaxSize.
	MaxSize        int64
	MaxStale       time.Duration
	NegativeTTL    time.Duration
	RevalidateWait time.Duration
	// ErrorBackoff is the backoff after a stale answer's first failed revalidation
	// (backoff.go).
	ErrorBackoff time.Duration
	// MaxBlobSize is the largest blob (an image config, typically) kept in memory; larger
	// blobs stream through. 0 means DefaultMaxBlobSize.
	MaxBlobSize int64
	// TagsMaxPages bounds the upstream pages one tags request may cost; TagsMaxCount and
	// TagsMaxBytes bound a repository's whole listing. 0 means DefaultTagsMaxPages,
	// DefaultTagsMaxCount, DefaultTagsMaxBytes.
	TagsMaxPages, TagsMaxCount, TagsMaxBytes int
	Logger                                   *zap.Logger
	// OnTagMove, when set, is told each time upstream's answer shows a tag pointing
	// somewhere new (not the first time a tag is seen). With a fleet, the replica that asked
	// upstream tells it; those that read the answer from Redis do not. It must not block.
	OnTagMove func(TagMove)
	// Redis, when set, is the second tier the replicas of a fleet share.
	Redis *RedisConfig
	// Snapshots makes entries keep their keys, so that SaveSnapshot can write them
	// (snapshot.go); without it a snapshot holds nothing.
	Snapshots bool
}

// TagMove is a tag found pointing somewhere new.
type TagMove struct {
	Upstream, Repository, Tag string
	From, To                  upstream.Descriptor
	At                        time.Time // when upstream answered
	// Body is To's verified manifest when the cache holds it (nil otherwise): for an index
	// or list, what it names per platform.
	Body []byte
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
	cfg   Config
	log   *zap.Logger
	store *store
	// fleet is the tier the replicas share (noFleet without Redis). Only misses consult it.
	fleet fleetTier
	// One flight group per kind of lookup (load.go): tags, manifests by digest, tags
	// listings, blobs.
	tagFlights    flight.Group[resolved]
	digestFlights flight.Group[*ManifestEntry]
	listFlights   flight.Group[*tagList]
	blobFlights   flight.Group[blobFetch]
	// tagsDropped counts tags upstream listed outside the tag grammar (never served);
	// tagsTruncated counts listings cut at their bound.
	tagsDropped, tagsTruncated atomic.Int64
	// credLog spaces out the log lines for upstreams refusing our credentials.
	credLog perUpstream
	// putLocks make putManifest's look-then-store one step per manifest key: a HEAD's
	// bodiless entry must not replace a body stored meanwhile, nor a body miss the claim
	// it should tell its descriptor.
	putLocks [64]sync.Mutex
	// refreshes is refresh-ahead's schedule (refresh.go).
	refreshes refresher
	stop      chan struct{}
	bg        sync.WaitGroup
}

// New builds a Cache.
func New(cfg Config) (*Cache, error) {
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	s, err := newStore(cfg.MaxSize)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.MaxBlobSize <= 0 {
		cfg.MaxBlobSize = DefaultMaxBlobSize
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
	c := &Cache{cfg: cfg, log: log, store: s, fleet: noFleet{}, stop: make(chan struct{})}
	if cfg.Redis != nil {
		r := newShared(*cfg.Redis, log)
		c.fleet = r
		c.bg.Add(1)
		go c.watchRedis(r)
	}
	c.startRefreshes()
	return c, nil
}

// Close stops the cache's background work (refresh-ahead included: its refreshes under
// way are waited for).
func (c *Cache) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.bg.Wait()
	c.fleet.close()
	c.store.close()
}

// watchRedis pings Redis every few seconds, so that /readyz and the metrics tell its
// state even while every request is a first-tier hit, and so that a Redis that came back
// is used again.
func (c *Cache) watchRedis(r *shared) {
	defer c.bg.Done()
	if err := r.ping(); err != nil {
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
			_ = r.ping()
		}
	}
}

// RedisStats is the shared tier's state, or nil without one.
func (c *Cache) RedisStats() *RedisStats { return c.fleet.stats() }

// fleetWait bounds how long a request waits on another replica's upstream request for
// o: revalidate_wait plus the upstream timeout, by when the holder's own request has ended.
func (c *Cache) fleetWait(o *Origin) time.Duration {
	return c.cfg.RevalidateWait + o.Registry.Timeout()
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
		if upstream.CredentialsRejected(err) && c.credLog.due(up, credentialLogInterval) {
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
