package cache

import (
	"testing"

	"go.uber.org/zap"
)

// A zero Config (and RedisConfig) field takes the package's default; the configuration's
// defaults are these same constants, the one place each is written.
func TestZeroConfigTakesDefaults(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatalf("New with a zero Config: %v", err)
	}
	defer c.Close()
	if got := c.store.rc.MaxCost(); got != DefaultMaxSize {
		t.Errorf("memory tier bound %d, want DefaultMaxSize %d", got, DefaultMaxSize)
	}
	if got := c.cfg; got.MaxBlobSize != DefaultMaxBlobSize || got.TagsMaxPages != DefaultTagsMaxPages ||
		got.TagsMaxCount != DefaultTagsMaxCount || got.TagsMaxBytes != DefaultTagsMaxBytes {
		t.Errorf("max_blob_size and tags bounds %d, %d/%d/%d; want %d, %d/%d/%d", got.MaxBlobSize, got.TagsMaxPages, got.TagsMaxCount,
			got.TagsMaxBytes, DefaultMaxBlobSize, DefaultTagsMaxPages, DefaultTagsMaxCount, DefaultTagsMaxBytes)
	}

	s := newShared(RedisConfig{Addr: "127.0.0.1:1"}, zap.NewNop()) // never dialled: no call is made
	defer s.close()
	if s.prefix != DefaultRedisKeyPrefix || s.opTime != DefaultRedisTimeout {
		t.Errorf("redis key prefix %q, timeout %v; want %q, %v", s.prefix, s.opTime, DefaultRedisKeyPrefix, DefaultRedisTimeout)
	}
}
