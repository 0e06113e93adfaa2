package cache

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// BenchmarkTagEntryMemory reports what one cached tag entry costs beyond any manifest
// body (the entry, its digest string, and ristretto's own bookkeeping): b.N entries are
// stored in a fresh cache and the heap's growth divided among them. The README's figure is
// go test -run XXX -bench TagEntryMemory -benchtime 100000x ./cache.
func BenchmarkTagEntryMemory(b *testing.B) {
	c, err := New(Config{MaxSize: 1 << 30, MaxStale: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	keys := make([]string, b.N)
	for j := range keys {
		keys[j] = tagKey("docker.io", fmt.Sprintf("library/app-%06d", j), "latest")
	}
	now := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for j, k := range keys {
		d := digest.FromString(k)
		e := &TagEntry{Descriptor: upstream.Descriptor{MediaType: upstream.MediaTypeOCIIndex, Digest: d, Size: 1609}, FetchedAt: now}
		for !c.store.rc.SetWithTTL(k, e, int64(len(k))+entryOverhead, 0) {
			c.store.rc.Wait() // the set buffer was full: let it drain, then retry
		}
		if j%1000 == 999 {
			c.store.rc.Wait()
		}
	}
	c.store.rc.Wait()
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	stored := 0
	for _, k := range keys {
		if c.store.tag(k) != nil {
			stored++
		}
	}
	if stored < b.N*99/100 {
		b.Fatalf("only %d of %d entries stayed", stored, b.N)
	}
	if stored > 0 {
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(stored), "B/entry")
	}
	runtime.KeepAlive(keys)
}
