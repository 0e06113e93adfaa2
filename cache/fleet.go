package cache

// The fleet tier: what the replicas of a fleet share (Redis or Valkey, in shared.go), as
// the miss path sees it. Without Redis it is noFleet, which holds nothing and coalesces
// nothing, so that the miss path reads the same with or without one.

import (
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// fleetTier is the second tier. Reads that fail are misses, writes that fail are dropped:
// memory and upstream carry on without it.
type fleetTier interface {
	getTag(up, repo, tag string, now time.Time) *TagEntry
	setTag(up, repo, tag string, e *TagEntry, ttl time.Duration)
	delTag(up, repo, tag string)
	getManifest(up, repo string, d digest.Digest) *ManifestEntry
	setManifest(up, repo string, m upstream.Manifest)
	getTagList(up, repo string, cfg Config, now time.Time) *tagList
	setTagList(up, repo string, l *tagList, ttl time.Duration)
	delTagList(up, repo string)

	// lock takes the fleet-wide lock on key; mine false means another replica holds it.
	// release is nil when no lock was taken (no fleet, or Redis failing): there is no one
	// to coordinate with.
	lock(key string) (release func(), mine bool)
	// await waits for key's holder: done once arrived reports its answer, or with the
	// failure it shared; not done, with the lock taken over (release) or none, for the
	// caller to ask upstream itself.
	await(key string, wait time.Duration, arrived func() bool) (release func(), done bool, err error)
	// setFailure tells the waiters on key why upstream gave no answer.
	setFailure(key string, err error)

	// stats is the tier's state for /readyz and the metrics, nil without one.
	stats() *RedisStats
	close()
}

// noFleet is the fleet tier of a lone replica: every read misses, every lock is ours.
type noFleet struct{}

func (noFleet) getTag(string, string, string, time.Time) *TagEntry       { return nil }
func (noFleet) setTag(string, string, string, *TagEntry, time.Duration)  {}
func (noFleet) delTag(string, string, string)                            {}
func (noFleet) getManifest(string, string, digest.Digest) *ManifestEntry { return nil }
func (noFleet) setManifest(string, string, upstream.Manifest)            {}
func (noFleet) getTagList(string, string, Config, time.Time) *tagList    { return nil }
func (noFleet) setTagList(string, string, *tagList, time.Duration)       {}
func (noFleet) delTagList(string, string)                                {}
func (noFleet) lock(string) (func(), bool)                               { return nil, true }
func (noFleet) setFailure(string, error)                                 {}
func (noFleet) stats() *RedisStats                                       { return nil }
func (noFleet) close()                                                   {}
func (noFleet) await(string, time.Duration, func() bool) (func(), bool, error) {
	return nil, false, nil
}
