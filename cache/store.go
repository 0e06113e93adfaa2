// Package cache answers manifest lookups from memory when it can and from upstream when it
// must: tag -> digest entries with a TTL, content-addressed manifest entries kept until
// evicted, remembered 404s, coalesced upstream requests, cheap revalidation with HEAD,
// stale answers while upstream fails, and tags in use refreshed ahead of their expiry.
package cache

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"

	"regcache/upstream"
)

// TagEntry is what a tag pointed to when it was last asked upstream.
type TagEntry struct {
	upstream.Descriptor
	FetchedAt time.Time
	// TTL is how long the entry stays fresh from FetchedAt: its tag's (Origin.TTLFor),
	// decided when it was stored.
	TTL time.Duration
	// Previous is where the tag pointed before it last moved (zero if it never did), so
	// that a client can still be served the old manifest if the new one cannot be fetched.
	Previous upstream.Descriptor
	// claim is set when Descriptor's type and size are what upstream's HEAD claimed (it may
	// claim anything), not what a verified body showed: it is the bodiless manifest entry
	// for the digest, which learns the verified descriptor once the body is fetched.
	claim *ManifestEntry
	// retry is the backoff while upstream fails to revalidate the tag (backoff.go).
	retry retry
	// asked is set by the first client hit in the entry's TTL window: refresh-ahead
	// refreshes only entries in use (refresh.go).
	asked atomic.Bool
	// key is the entry's memory key, kept only with Config.Snapshots: ristretto keeps
	// hashes, and a snapshot must name what it saves (snapshot.go).
	key string
}

// descriptor is what to answer for the tag: its body's verified type and size once known.
// On the hit path: a nil check and an atomic load, no look-up.
func (e *TagEntry) descriptor() upstream.Descriptor {
	if e.claim != nil {
		if v := e.claim.verified.Load(); v != nil {
			return *v
		}
	}
	return e.Descriptor
}

// ManifestEntry is a manifest by digest. Body is nil when only a HEAD has been seen.
type ManifestEntry struct {
	upstream.Descriptor
	Body []byte
	// verified is set, on an entry without a body, when the body has been fetched and
	// verified since: the tag entries whose claim this is answer with it from then on.
	verified atomic.Pointer[upstream.Descriptor]
	// key is the entry's memory key, kept only with Config.Snapshots (as TagEntry's).
	key string
}

// negativeEntry is an upstream "no" worth remembering (404, denied).
type negativeEntry struct{ err error }

// entryOverhead approximates the bytes an entry costs beyond its key and body (measured:
// BenchmarkTagEntryMemory, ~373 B a tag entry with its key): the struct,
// the ristretto item and map slot. It keeps tag-only caches bounded by max_size too.
const entryOverhead = 336

// store is one ristretto cache for all three kinds of entry, so that one max_size budget
// and one admission policy govern them all. Keys start with the kind's letter.
type store struct {
	rc *ristretto.Cache[string, any]
	// closeMu keeps close from running under a set: ristretto's Close while a Set or Wait is
	// under way panics (a send on its closed buffer) or leaves the Wait hanging for ever, and
	// a flight that outlived its waiters may well be storing its answer at shutdown.
	closeMu sync.RWMutex
	closed  bool
}

func newStore(maxCost int64) (*store, error) {
	// ristretto wants ~10 counters per item it may hold; assume 2 KiB per item on average.
	counters := max(maxCost/2048*10, 100_000)
	rc, err := ristretto.NewCache(&ristretto.Config[string, any]{
		NumCounters: counters,
		MaxCost:     maxCost,
		// Gets are handed to the admission policy in batches of this many: 256 rather than
		// ristretto's suggested 64 wakes its goroutine a quarter as often, about 5% of a
		// HEAD hit (BenchmarkHitHeadByTag, 485 -> 458 ns, best of 6). The price: a batch
		// not yet full when the GC empties ristretto's pool is lost, so on a quiet
		// instance fewer reads reach the frequency counts that admission judges by.
		BufferItems:        256,
		IgnoreInternalCost: true,
		Metrics:            true,
	})
	if err != nil {
		return nil, err
	}
	return &store{rc: rc}, nil
}

func tagKey(up, repo, tag string) string      { return "t\x00" + up + "\x00" + repo + "\x00" + tag }
func manifestKey(up, repo, d string) string   { return "m\x00" + up + "\x00" + repo + "\x00" + d }
func negativeKey(up, repo, ref string) string { return "n\x00" + up + "\x00" + repo + "\x00" + ref }

func (s *store) tag(key string) *TagEntry {
	v, ok := s.rc.Get(key)
	if !ok {
		return nil
	}
	e, _ := v.(*TagEntry)
	return e
}

func (s *store) manifest(key string) *ManifestEntry {
	v, ok := s.rc.Get(key)
	if !ok {
		return nil
	}
	e, _ := v.(*ManifestEntry)
	return e
}

func (s *store) negative(key string) error {
	v, ok := s.rc.Get(key)
	if !ok {
		return nil
	}
	if e, ok := v.(*negativeEntry); ok {
		return e.err
	}
	return nil
}

// set stores and then waits for ristretto's buffered write to land, so the next request
// after a miss is a hit rather than a second upstream request. Only misses pay the wait.
func (s *store) set(key string, v any, cost int64, ttl time.Duration) {
	if ttl < 0 {
		return
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return
	}
	s.rc.SetWithTTL(key, v, cost+int64(len(key))+entryOverhead, ttl)
	s.rc.Wait()
}

func (s *store) del(key string) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if !s.closed {
		s.rc.Del(key)
	}
}

func (s *store) close() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if !s.closed {
		s.closed = true
		s.rc.Close()
	}
}
