package cache

// Stats is a snapshot of the cache for metrics.
type Stats struct {
	// SizeBytes is the cost held now: cached bodies plus per-entry overhead.
	SizeBytes int64
	// MaxBytes is max_size.
	MaxBytes int64
	// Entries is how many entries are held (tags, manifests, remembered 404s, listings,
	// blobs): ristretto's keys added less those that left (evicted, deleted or expired and
	// cleaned up).
	Entries int64
	// Evictions counts entries removed: pushed out to make room, expired or deleted
	// (ristretto counts them as one).
	Evictions uint64
	// Coalesced counts requests that waited on another's upstream request instead of
	// making their own.
	Coalesced int64
	// InFlight is upstream work under way now.
	InFlight int
	// TagsDropped counts tags upstream listed outside the tag grammar, never served;
	// TagsTruncated counts tags listings cut at cache.tags_max_count or tags_max_bytes.
	TagsDropped, TagsTruncated int64
}

// Stats reads the cache's counters.
func (c *Cache) Stats() Stats {
	m := c.store.rc.Metrics
	return Stats{
		SizeBytes: c.store.rc.MaxCost() - c.store.rc.RemainingCost(),
		MaxBytes:  c.store.rc.MaxCost(),
		Entries:   max(int64(m.KeysAdded())-int64(m.KeysEvicted()), 0),
		Evictions: m.KeysEvicted(),
		Coalesced: c.tagFlights.Joined() + c.digestFlights.Joined() + c.listFlights.Joined() + c.blobFlights.Joined(),
		InFlight:  c.tagFlights.InFlight() + c.digestFlights.InFlight() + c.listFlights.InFlight() + c.blobFlights.InFlight(),

		TagsDropped:   c.tagsDropped.Load(),
		TagsTruncated: c.tagsTruncated.Load(),
	}
}
